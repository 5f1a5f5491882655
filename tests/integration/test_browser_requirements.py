"""The browser tests skip without Chromium and its driver, except under CI, where they fail."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# run pytest on the browser tests with /usr/bin/chromium and /usr/bin/chromedriver looking absent
RUN = r"""
import os, sys
real = os.path.exists
os.path.exists = lambda p: False if p in ("/usr/bin/chromium", "/usr/bin/chromedriver") else real(p)
import pytest
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", sys.argv[1]]))
"""


def _run(ci: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci:
        env["CI"] = "1"
    return subprocess.run([sys.executable, "-c", RUN, str(HERE / "test_browser.py")], capture_output=True, text=True,
                          env=env, cwd=HERE.parent.parent, timeout=600)


def test_missing_browser_skips_locally_and_fails_under_ci():
    local = _run(ci=False)
    assert local.returncode == 5, local.stdout[-2000:]  # the whole module skipped: no test ran
    assert "1 skipped" in local.stdout and "/usr/bin/chromium, /usr/bin/chromedriver missing" in local.stdout
    ci = _run(ci=True)
    assert ci.returncode == 2, ci.stdout[-2000:]  # an error, not a skip
    assert "1 error" in ci.stdout and "/usr/bin/chromium, /usr/bin/chromedriver missing" in ci.stdout
