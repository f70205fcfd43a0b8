"""Where each object key of a JSON document sits, so reports can point at its line.

``json`` decodes but forgets positions. Lock files are pretty-printed and big
(a front-end app's ``package-lock.json`` has megabytes), so this walks the
tokens with one regular expression instead of a character loop, and only
records the line of every object key by its path (``("packages",
"node_modules/a")`` → 12). Decoding itself is still left to ``json``; this
module assumes the text is valid JSON.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

__all__ = ["KeyPath", "key_lines"]

KeyPath = tuple[str | int, ...]

_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|[{}\[\]:,\n]')


@dataclass
class _Frame:
    path: KeyPath
    is_object: bool
    expecting_key: bool
    current: str | int = 0
    """The key being read (objects) or the item's index (arrays)."""


def _text(token: str) -> str:
    # A key's escapes are rare in lock files; decode only when there are some.
    if "\\" not in token:
        return token[1:-1]
    value = json.loads(token)
    return value if isinstance(value, str) else token[1:-1]


def key_lines(text: str) -> dict[KeyPath, int]:
    """Path of every object key (array items by index) → 1-based line of the key."""
    lines: dict[KeyPath, int] = {}
    line = 1
    stack: list[_Frame] = []
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token == "\n":
            line += 1
            continue
        top = stack[-1] if stack else None
        if token[0] == '"':
            if top is not None and top.is_object and top.expecting_key:
                top.current = _text(token)
                lines.setdefault((*top.path, top.current), line)
                top.expecting_key = False
        elif token in "{[":
            parent: KeyPath = () if top is None else (*top.path, top.current)
            stack.append(_Frame(parent, token == "{", token == "{"))
        elif token in "}]":
            if stack:
                stack.pop()
        elif token == "," and top is not None:
            if top.is_object:
                top.expecting_key = True
            elif isinstance(top.current, int):
                top.current += 1
    return lines
