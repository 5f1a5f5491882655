"""The wheel carries its migrations: build it, install it into a fresh virtual environment, create a
library with it and check the schema was migrated from files inside the installed package."""

from __future__ import annotations

import site
import sqlite3
import subprocess
import sys
import sysconfig
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent


def test_wheel_installs_and_migrates(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(ROOT)],
                   check=True, capture_output=True, text=True, cwd=tmp_path)
    wheel = next(dist.glob("clipsearch-*.whl"))
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "clipsearch/migrations/env.py" in names
    assert any(n.startswith("clipsearch/migrations/versions/0001") for n in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    # dependencies come from the test environment (no downloads); the package itself from the wheel
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    deps = [p for p in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()}]
    Path(purelib, "test-deps.pth").write_text("\n".join(deps) + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
                   check=True, capture_output=True, text=True)
    code = (
        "import clipsearch, clipsearch.store as s, sys\n"
        "from pathlib import Path\n"
        "assert str(Path(clipsearch.__file__).resolve()).startswith(sys.argv[2]), clipsearch.__file__\n"
        "assert str(s.migrations_dir().resolve()).startswith(sys.argv[2]), s.migrations_dir()\n"
        "from clipsearch import Library\n"
        "lib = Library.open(sys.argv[1], model='shapes'); print(lib.status()['library']); lib.close()\n"
    )
    out = subprocess.run([str(py), "-c", code, str(tmp_path / "lib"), str(venv.resolve())],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    con = sqlite3.connect(tmp_path / "lib" / "library.db")
    from clipsearch.store import SCHEMA_HEAD
    assert con.execute("SELECT version_num FROM alembic_version").fetchone()[0] == SCHEMA_HEAD
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"meta", "roots", "files", "embeddings"} <= tables
    con.close()
    help_out = subprocess.run([str(venv / "bin" / "clipsearch"), "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert help_out.returncode == 0 and "index" in help_out.stdout
