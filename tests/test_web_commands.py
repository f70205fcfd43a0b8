"""An operator's bootstrap: ``lapsewatch admin`` makes an admin, an API key and a
webhook, then ``lapsewatch serve`` (a real uvicorn process on loopback) lets
them in. The commands are mounted on a test app, as ``cli.py`` mounts them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyotp
import pytest
import typer
from typer.testing import CliRunner

from lapsewatch.commands.admin import admin_app
from lapsewatch.commands.serve import serve
from tests.web_support import csrf_of, install_fake_dns, secret_of

PASSWORD = "an operator's passphrase"

cli = typer.Typer()
cli.add_typer(admin_app, name="admin")
cli.command()(serve)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        "LAPSEWATCH_DATABASE_URL": f"sqlite:///{tmp_path / 'lapsewatch.db'}",
        "LAPSEWATCH_SECRET_KEY": "a test secret key",
        "LAPSEWATCH_SMTP_URL": "smtp://127.0.0.1:1",
    }


def run(env: dict[str, str], *args: str, input: str | None = None) -> str:
    result = CliRunner().invoke(cli, list(args), env=env, input=input)
    assert result.exit_code == 0, result.output
    return result.output


def fails(env: dict[str, str], *args: str) -> str:
    result = CliRunner().invoke(cli, list(args), env=env)
    assert result.exit_code == 2, result.output
    return result.output


def test_admin_commands(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake_dns(monkeypatch)
    created = run(env, "admin", "create-admin", "root", "--password", PASSWORD)
    assert "admin root created" in created
    assert "admins need two-factor authentication" in created
    assert "exists" in fails(env, "admin", "create-admin", "ROOT", "--password", PASSWORD)
    assert "exists" in fails(env, "admin", "create-admin", "root", "--password", PASSWORD)
    assert "at least 10 characters" in fails(env, "admin", "create-admin", "x", "--password", "a")
    prompted = run(env, "admin", "create-admin", "ops", input=f"{PASSWORD}\n{PASSWORD}\n")
    assert "admin ops created" in prompted
    assert "no longer an admin" in run(env, "admin", "revoke", "ops")
    assert "now an admin" in run(env, "admin", "grant", "ops")
    assert "no account" in fails(env, "admin", "grant", "nobody")

    key = run(env, "admin", "api-key", "registry").strip()
    assert key.startswith("lw_")
    assert "exists already" in fails(env, "admin", "api-key", "registry")
    keys = json.loads(run(env, "admin", "api-keys", "--format", "json"))
    assert [(k["name"], k["revoked_at"]) for k in keys] == [("registry", None)]
    assert "revoked" in run(env, "admin", "revoke-api-key", "registry")
    assert "no live API key" in fails(env, "admin", "revoke-api-key", "registry")

    added = run(env, "admin", "webhook", "add", "https://registry.test/hooks")
    assert "secret: whsec_" in added
    assert "not a usable URL" in fails(env, "admin", "webhook", "add", "https://[::1")
    assert "a loopback address" in fails(env, "admin", "webhook", "add", "http://127.0.0.1:22/")
    allowed = {**env, "LAPSEWATCH_WEBHOOK_ALLOW": "127.0.0.0/8"}
    assert "secret: whsec_" in run(allowed, "admin", "webhook", "add", "http://127.0.0.1:9/")
    bad = {**env, "LAPSEWATCH_WEBHOOK_ALLOW": "not a network"}
    assert "is not an IP network" in fails(bad, "admin", "webhook", "add", "http://127.0.0.1:9/")
    hooks = json.loads(run(env, "admin", "webhook", "list", "--format", "json"))
    assert [h["url"] for h in hooks] == ["https://registry.test/hooks", "http://127.0.0.1:9/"]
    assert [h["api_key_id"] for h in hooks] == [None, None]  # made by the operator
    summary = json.loads(run(env, "admin", "deliver-webhooks", "--format", "json"))
    assert summary == {"queued": 0, "delivered": 0, "failed": 0, "gave_up": 0}
    for hook in hooks:
        assert "stopped" in run(env, "admin", "webhook", "remove", str(hook["id"]))
    assert "no active webhook" in fails(env, "admin", "webhook", "remove", str(hooks[0]["id"]))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def server(env: dict[str, str]) -> Iterator[str]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    code = "import typer; from lapsewatch.commands.serve import serve; typer.run(serve)"
    process = subprocess.Popen(
        # --webhooks-every: as unit files of an earlier release pass it (ignored, warned)
        [sys.executable, "-c", code, "--port", str(port), "--webhooks-every", "0"],
        env={**os.environ, **env, "LAPSEWATCH_BASE_URL": url},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(url + "/", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                output = process.stdout.read().decode() if process.stdout else ""
                raise AssertionError(f"lapsewatch serve did not start:\n{output}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_serve_lets_the_bootstrapped_admin_and_registry_in(
    env: dict[str, str], server: str
) -> None:
    run(env, "admin", "create-admin", "root", "--password", PASSWORD)
    key = run(env, "admin", "api-key", "registry").strip()
    with httpx.Client(base_url=server, timeout=5) as browser:
        token = csrf_of(browser.get("/account/login").text)
        login = browser.post(
            "/account/login",
            data={"username": "root", "password": PASSWORD, "csrf_token": token},
        )
        assert login.status_code == 303
        # No dashboard before 2FA: the admin is sent to set it up.
        closed = browser.get("/admin")
        assert closed.status_code == 303
        assert closed.headers["location"] == "/account/2fa"
        setup = browser.get("/account/2fa")
        code = pyotp.TOTP(secret_of(setup.text)).now()
        token = csrf_of(setup.text)
        turned_on = browser.post(  # ten recovery codes hashed with production Argon2
            "/account/2fa", data={"code": code, "csrf_token": token}, timeout=120
        )
        assert turned_on.status_code == 200
        dashboard = browser.get("/admin")
        assert dashboard.status_code == 200
        assert "Dashboard" in dashboard.text
        assert "server" not in dashboard.headers
    report = httpx.get(
        server + "/api/v1/report", headers={"Authorization": f"Bearer {key}"}, timeout=5
    )
    assert report.status_code == 200
    assert report.json()["addresses"]["total"] == 0
    assert httpx.get(server + "/api/v1/report", timeout=5).status_code == 401
