"""Named crash points for the crash-test harness (tests/test_crash*.py): TEST-ONLY machinery, off unless the
environment says so when the CLI starts (cli.main calls `configure()` once; importing this module reads nothing).

    CLIPSEARCH_CRASH_AT=name[:n][,name[:n]...]   SIGKILL this process at the n-th (default 1st) hit of `name`
    CLIPSEARCH_CRASH_LOG=/path/file.jsonl         append one JSON line per hit (e.g. every committed batch)
    CLIPSEARCH_CRASH_PAUSE=name:seconds[,...]     sleep at every hit of `name` (so a test's signal surely
                                                  arrives while the run is still going, however fast it is)

Names: before_embed, mid_commit, after_commit, mid_sweep, after_sweep, mid_checkpoint (the cache file is
half written), before_replace, after_replace (between os.replace and the directory fsync), mid_migration.

Callers guard with `if _crashpoints.ACTIVE:` so an unset environment costs one attribute lookup.
Only `configure` reads these variables, with the environment the CLI passes it; the harness is their only user.
"""

from __future__ import annotations

import json
import os
import signal
import time

ACTIVE = False
_targets: dict[str, int] = {}
_counts: dict[str, int] = {}
_pauses: dict[str, float] = {}
_log_fd: int | None = None


def configure(environ) -> None:
    """(Re)read the settings from `environ` (the CLI's environment; a forked test child's after changing it)."""
    global ACTIVE, _log_fd
    _targets.clear()
    _counts.clear()
    _pauses.clear()
    if _log_fd is not None:
        os.close(_log_fd)
        _log_fd = None
    for part in filter(None, (environ.get("CLIPSEARCH_CRASH_AT") or "").split(",")):
        name, _, n = part.partition(":")
        _targets[name.strip()] = int(n or 1)
    for part in filter(None, (environ.get("CLIPSEARCH_CRASH_PAUSE") or "").split(",")):
        name, _, seconds = part.partition(":")
        _pauses[name.strip()] = float(seconds or 0.05)
    log = environ.get("CLIPSEARCH_CRASH_LOG")
    if log:
        _log_fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    ACTIVE = bool(_targets) or bool(_pauses) or _log_fd is not None


def hit(name: str, **info) -> None:
    """Record reaching `name` (with `info`), and die here if the harness asked for it."""
    n = _counts[name] = _counts.get(name, 0) + 1
    if _log_fd is not None:
        line = json.dumps({"event": name, "n": n, "pid": os.getpid(), **info}, default=_plain)
        os.write(_log_fd, line.encode() + b"\n")
    if _targets.get(name) == n:
        os.kill(os.getpid(), signal.SIGKILL)
    if name in _pauses:
        time.sleep(_pauses[name])


def _plain(o):
    if isinstance(o, bytes):
        return os.fsdecode(o)
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    return str(o)
