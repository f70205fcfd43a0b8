"""Issue #16: structured logs. ``LAPSEWATCH_LOG_FORMAT=json`` gives one JSON object a
line, with the domain, verdict, source and request id where they apply."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from lapsewatch.logs import JsonFormatter, configure_logging, log_context
from lapsewatch.store import make_engine, upgrade
from lapsewatch.world import World, demo_scenario
from tests.cycle_support import EXPECTED_UNVERIFIED, NOW, seed
from tests.mail_support import account_settings
from tests.web_support import make_service, make_web_app


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """JSON lines of everything logged under ``lapsewatch``, at DEBUG and above."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("lapsewatch")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_one_json_object_per_line_with_context(captured: io.StringIO) -> None:
    log = logging.getLogger("lapsewatch.test")
    log.warning("%s: rdap gave no answer", "alice-consulting.example")
    with log_context(source="rdap", verdict="unknown"):
        log.info("plain %s", "message", extra={"server": "rdap.example:443"})
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        log.exception("failed")
    first, second, third = lines(captured)
    assert first["domain"] == "alice-consulting.example"
    assert first["level"] == "warning"
    assert first["logger"] == "lapsewatch.test"
    assert first["msg"] == "alice-consulting.example: rdap gave no answer"
    assert str(first["ts"]).endswith("+00:00")
    assert second == {
        "ts": second["ts"],
        "level": "info",
        "logger": "lapsewatch.test",
        "msg": "plain message",
        "verdict": "unknown",
        "source": "rdap",
        "server": "rdap.example:443",
    }
    assert "RuntimeError: boom" in str(third["exc"])
    assert len(captured.getvalue().splitlines()) == 3  # the traceback stays inside its line


def test_configure_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    before = list(root.handlers), root.level
    try:
        configure_logging({})  # nothing asked: nothing changes
        assert list(root.handlers) == before[0]
        configure_logging({"LAPSEWATCH_LOG_FORMAT": "json", "LAPSEWATCH_LOG_LEVEL": "warning"})
        configure_logging({"LAPSEWATCH_LOG_FORMAT": "json"})  # again: still one handler
        ours = [h for h in root.handlers if h.get_name() == "lapsewatch"]
        assert len(ours) == 1
        assert isinstance(ours[0].formatter, JsonFormatter)
        assert root.level == logging.INFO
        with pytest.raises(ValueError, match="LAPSEWATCH_LOG_FORMAT"):
            configure_logging({"LAPSEWATCH_LOG_FORMAT": "xml"})
        with pytest.raises(ValueError, match="LAPSEWATCH_LOG_LEVEL"):
            configure_logging({"LAPSEWATCH_LOG_LEVEL": "loud"})
    finally:
        for handler in [h for h in root.handlers if h.get_name() == "lapsewatch"]:
            root.removeHandler(handler)
        root.setLevel(before[1])


def test_web_requests_carry_a_request_id(tmp_path: Path, captured: io.StringIO) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")  # not migrated: /readyz logs
    service = make_service(engine, account_settings("smtp://127.0.0.1:1"))
    with TestClient(make_web_app(engine, service)) as client:
        given = client.get("/readyz", headers={"X-Request-Id": "proxy-42.a"})
        assert given.headers["x-request-id"] == "proxy-42.a"
        made = client.get("/readyz", headers={"X-Request-Id": "evil id{}/" + "x" * 80})
        assert made.headers["x-request-id"] != "evil id{}"
        assert len(made.headers["x-request-id"]) == 16
        assert client.get("/healthz").headers["x-request-id"]
    warnings = [line for line in lines(captured) if line["logger"] == "lapsewatch.web.ops"]
    assert [line["request_id"] for line in warnings] == [
        "proxy-42.a",
        made.headers["x-request-id"],
    ]


def test_check_logs_json_lines_with_domain_and_verdict(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'lapsewatch.db'}")
    upgrade(engine)
    seed(engine)
    with World(demo_scenario(now=NOW), hang_seconds=1.0) as world:
        env = {
            **os.environ,
            **world.env(),
            "LAPSEWATCH_TIMEOUT": "0.5",
            "LAPSEWATCH_ATTEMPTS": "2",
            "LAPSEWATCH_MAX_RETRY_AFTER": "1",
            "LAPSEWATCH_DATABASE_URL": engine.url.render_as_string(hide_password=False),
            "LAPSEWATCH_LOG_FORMAT": "json",
        }
        done = subprocess.run(
            [sys.executable, "-m", "lapsewatch", "check", "--format", "json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 1, done.stderr
    records = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]
    assert records, "no log lines"
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    unverified = {
        str(r["domain"]): r["verdict"]
        for r in records
        if r["logger"] == "lapsewatch.cycle.results" and r.get("unverified")
    }
    expected = {address.split("@")[1]: verdict for address, verdict in EXPECTED_UNVERIFIED.items()}
    assert unverified == expected
    assert json.loads(done.stdout)["unverified"] == len(EXPECTED_UNVERIFIED)
