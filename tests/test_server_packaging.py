"""The wheel carries the server package and the page's static files (package data)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_holds_the_page(tmp_path):
    # built from a copy of the tracked files: the checkout's own build/ and *.egg-info would mask a missing entry
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout.split(b"\0")
    for name in filter(None, files):
        path = ROOT / name.decode()
        if path.is_file() and not name.startswith((b"docs/", b"tests/", b"benchmarks/")):
            (src / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, src / name.decode())
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(src)],
                   check=True, capture_output=True, text=True, cwd=tmp_path)
    wheel = next(tmp_path.glob("clipsearch-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = z.read(meta).decode()
    for name in ("__init__.py", "app.py", "api.py", "security.py", "files.py", "thumbs.py", "uploads.py", "runner.py",
                 "static/index.html", "static/app.js", "static/style.css"):
        assert f"clipsearch/server/{name}" in names, name
    assert "clipsearch/cli_serve.py" in names
    assert "Provides-Extra: web" in metadata
    assert any(line.startswith("Requires-Dist: fastapi") and 'extra == "web"' in line for line in metadata.splitlines())
