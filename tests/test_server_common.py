"""Helpers shared by the web server's tests (no tests here): the quick start's library, raw HTTP."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from conftest import run_cli

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_images"

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


def quickstart_library(tmp_path_factory) -> Path:
    """The quick start's library (sample_images indexed with the shipped shapes model), built once a session.

    Tests must not change it: those that index more or break files make their own."""
    lib = tmp_path_factory.getbasetemp() / "web-quickstart-library"
    if not (lib / ".complete").exists():
        shutil.rmtree(lib, ignore_errors=True)
        run_cli("index", str(SAMPLES), "--model", "shapes", "--library", str(lib), "-q", check=True)
        (lib / ".complete").write_text("ok")
    return lib


def index(folder: Path, lib: Path, model: str, **options) -> None:
    """Index a folder in this process (quicker than the CLI, which the quick start's library goes through)."""
    from clipsearch import Library

    with Library.open(lib, model=model, **options) as library:
        report = library.index([folder])
    assert not report.skipped, report.skipped


def raw_get(port: int, target: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One GET with the request target sent byte for byte (clients normalise `..` and percent escapes)."""
    hdrs = {"Host": f"127.0.0.1:{port}", "Connection": "close", **(headers or {})}
    request = b"GET " + target + b" HTTP/1.1\r\n" + b"".join(
        f"{k}: {v}\r\n".encode("latin-1") for k, v in hdrs.items()) + b"\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request)
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    data = b"".join(chunks)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    out = {}
    for line in lines[1:]:
        k, _, v = line.decode("latin-1").partition(":")
        out[k.strip().lower()] = v.strip()
    return status, out, body
