"""`clipsearch serve`: binding and token decisions, the printed URL, the missing extra, a real run stopped by a
signal, the listening socket's options."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from click.testing import CliRunner

from test_server_common import quickstart_library

import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from clipsearch import cli_serve  # noqa: E402
from clipsearch.cli import cli  # noqa: E402
from clipsearch.server import runner  # noqa: E402


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return quickstart_library(tmp_path_factory)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST"])
def test_loopback_hosts_need_no_token(host):
    plan = cli_serve.plan_access(host, (), {})
    assert plan["token"] is None and plan["loopback"] and not plan["allow_ip_hosts"]
    bare = host.strip("[]").lower()
    assert set(plan["allowed_hosts"]) == {"localhost", "127.0.0.1", "[::1]", f"[{bare}]" if ":" in bare else bare}


def test_other_hosts_get_a_random_token():
    lan = cli_serve.plan_access("192.168.1.7", ("photos.lan",), {})
    assert len(lan["token"]) >= 40 and not lan["loopback"]
    assert "192.168.1.7" in lan["allowed_hosts"] and "photos.lan" in lan["allowed_hosts"]
    assert not lan["allow_ip_hosts"]
    assert cli_serve.plan_access("192.168.1.7", (), {})["token"] != lan["token"]
    every = cli_serve.plan_access("0.0.0.0", (), {})
    assert every["token"] and every["allow_ip_hosts"]  # any address of the machine; a name must be known
    assert cli_serve.plan_access("::", (), {})["allow_ip_hosts"]
    v6 = cli_serve.plan_access("fd00::5", (), {})
    assert v6["token"] and "[fd00::5]" in v6["allowed_hosts"]
    assert cli_serve.plan_access("0.0.0.0", (), {"CLIPSEARCH_SERVE_TOKEN": "from-env"})["token"] == "from-env"


@pytest.fixture
def captured(monkeypatch):
    """Run `serve` up to the point where uvicorn would start, on 127.0.0.1 whatever --host says."""
    got = {"opened": []}
    real_bind = runner.bind

    def bind(host, port):
        sock = real_bind("127.0.0.1", 0)
        got["port"] = sock.getsockname()[1]
        return sock

    def run(server, sock):  # instead of serving: the test's checks, while the reader is open
        got["server"] = server
        got["during"](server.config.app, got["port"])

    monkeypatch.setattr(runner, "bind", bind)
    monkeypatch.setattr(cli_serve, "_run", run)
    monkeypatch.setattr("webbrowser.open", lambda url: got["opened"].append(url))
    return got


def test_a_network_host_prints_a_warning_and_a_token_url_and_requires_it(library, captured):
    seen = {}

    def during(app, port):
        with TestClient(app, base_url=f"http://127.0.0.1:{port}", follow_redirects=False) as c:
            seen["no token"] = c.get("/api/status").status_code
            token = captured["opened"][0].split("?token=")[1]
            auth = {"authorization": f"token {token}"}
            seen["token"] = c.get("/api/status", headers=auth).status_code
            seen["ip"] = c.get("/api/status", headers={**auth, "host": f"10.1.2.3:{port}"}).status_code
            seen["name"] = c.get("/api/status", headers={**auth, "host": f"evil.example:{port}"}).status_code

    captured["during"] = during
    res = CliRunner().invoke(cli, ["serve", "--library", str(library), "--host", "0.0.0.0", "--port", "0", "--open"])
    assert res.exit_code == 0, res.output
    port = captured["port"]
    first = res.stdout.splitlines()[0]
    assert first.startswith(f"Serving at http://127.0.0.1:{port}/?token=")
    assert len(first.split("?token=")[1]) >= 40
    assert "Warning: listening on 0.0.0.0, reachable from other machines" in res.stderr
    assert "36 images" in res.stderr
    assert captured["opened"] == [first.split()[-1]]
    config = captured["server"].config
    assert config.proxy_headers is False and config.access_log is False  # X-Forwarded-* ignored, no URL logs
    assert seen == {"no token": 401, "token": 200, "ip": 200, "name": 403}


def test_loopback_prints_a_plain_url_and_checks_the_port(library, captured):
    seen = {}

    def during(app, port):
        with TestClient(app, base_url=f"http://127.0.0.1:{port}") as c:
            seen["ip"] = c.get("/api/status").status_code
            seen["name"] = c.get("/api/status", headers={"host": f"localhost:{port}"}).status_code
            seen["other port"] = c.get("/api/status", headers={"host": f"localhost:{port + 1}"}).status_code

    captured["during"] = during
    res = CliRunner().invoke(cli, ["serve", "--library", str(library), "--port", "0"])
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines()[0] == f"Serving at http://127.0.0.1:{captured['port']}/"
    assert "Warning" not in res.stderr and captured["opened"] == []
    assert seen == {"ip": 200, "name": 200, "other port": 403}


def test_without_the_web_extra_it_says_how_to_install_it(library, monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if it were not installed
    res = CliRunner().invoke(cli, ["serve", "--library", str(library)])
    assert res.exit_code == 1
    assert "pip install 'clipsearch[web]'" in res.stderr and "Traceback" not in res.output


def test_errors_are_one_line(tmp_path):
    res = CliRunner().invoke(cli, ["serve", "--library", str(tmp_path / "none")])
    assert res.exit_code == 1 and "no library at" in res.stderr
    res = CliRunner().invoke(cli, ["serve", "--library", str(tmp_path), "--allow-host", "a:b:c"])
    assert res.exit_code == 2 and "not a host name" in res.stderr


def test_a_busy_port_is_a_clear_error(library):
    sock = runner.bind("127.0.0.1", 0)
    try:
        port = sock.getsockname()[1]
        res = CliRunner().invoke(cli, ["serve", "--library", str(library), "--port", str(port)])
        assert res.exit_code == 1 and f"cannot listen on 127.0.0.1:{port}" in res.stderr
    finally:
        sock.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_real_server_answers_and_stops_cleanly_on_a_signal(library, sig, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("[serve]\nport = 0\nthumb-cache-mb = 8\n")  # a [serve] table in the config file
    env = {**{k: v for k, v in os.environ.items() if k != "CLIPSEARCH_HOME"}, "CLIPSEARCH_CONFIG": str(config)}
    proc = subprocess.Popen([sys.executable, "-m", "clipsearch", "serve", "--library", str(library)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()  # printed once the socket listens
        assert line.startswith("Serving at http://127.0.0.1:"), (line, proc.stderr.read() if not line else "")
        url = line.split()[-1]
        assert not url.endswith(":8000/")  # the port came from the config file
        status = httpx.get(url + "api/status", timeout=60).json()
        assert status["images"] == 36 and status["model"] == "shapes"
        assert status["text_engine"] == "onnxruntime"  # a long-lived process: the faster engine, set up at start
        res = httpx.get(url + "api/search", params={"q": "a red circle", "limit": 3}, timeout=60)
        assert res.status_code == 200 and len(res.json()["results"]) == 3
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "clipsearch serve stopped." in err and "Traceback" not in err


def test_the_servers_connections_send_without_waiting_for_acks():
    """Without TCP_NODELAY a keep-alive response waited ~40 ms for the client's delayed ACK (Nagle's algorithm).
    asyncio sets it on the connections of a listening socket only when that socket's proto is IPPROTO_TCP."""
    import asyncio
    import socket

    sock = runner.bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    seen = []

    async def main():
        def connected(reader, writer):
            s = writer.get_extra_info("socket")
            seen.append(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(connected, sock=sock)
        _, w = await asyncio.open_connection("127.0.0.1", port)
        while not seen:
            await asyncio.sleep(0.01)
        w.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())
    assert seen == [1]
