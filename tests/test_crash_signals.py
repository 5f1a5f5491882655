"""Ctrl-C and SIGTERM during `clipsearch index` (real child processes): the batch being committed is
finished or rolled back, the cache is published, the lock released, and the exit status is 130 / 143."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import threading
import sys
import time
from pathlib import Path

import pytest

from clipsearch import Library
from clipsearch.vector_index import VectorIndex

from conftest import make_image
from reliability_helpers import db_rows


def read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:  # a line cut by a kill
            pass
    return out


def _interactive_signals() -> None:
    """The child starts as a command typed at a terminal would: SIGINT not ignored. A test run started in
    the background by a non-interactive shell (`cmd &`) inherits SIGINT ignored, and Python then leaves it
    ignored, so the child would never see the Ctrl-C this test sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_during_index(tmp_path, tiny_model, sig, code):
    photos = tmp_path / "photos"
    n = 240
    for i in range(n):
        make_image(photos / f"{i:04d}.png", 1000 + i, size=(32, 32))
    lib_dir = tmp_path / "lib"
    log = tmp_path / "log.jsonl"
    # 60 batches at 0.05 s each: the run lasts seconds however fast indexing becomes (240 tiny images once took 0.6 s,
    # and the signal arrived after the run had ended)
    env = dict(os.environ, CLIPSEARCH_CRASH_LOG=str(log), CLIPSEARCH_CRASH_PAUSE="after_commit:0.05")
    env.pop("CLIPSEARCH_HOME", None)
    child = subprocess.Popen(
        [sys.executable, "-m", "clipsearch", "index", str(photos), "--library", str(lib_dir), "--model", tiny_model,
         "--batch-size", "4", "--workers", "1", "-q"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_interactive_signals)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len([e for e in read_log(log) if e["event"] == "after_commit"]) < 3:
        time.sleep(0.02)
    child.send_signal(sig)
    out, err = child.communicate(timeout=120)
    assert child.returncode == code, err
    assert "Traceback" not in err
    assert ("Terminated" if sig == signal.SIGTERM else "Interrupted") in err

    # the lock is free
    fd = os.open(lib_dir / "lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(fd)
    # every acknowledged batch is there; the cache was published up to the last commit
    committed = {p: h for e in read_log(log) if e["event"] == "after_commit" for p, h in e["ok"].items()}
    assert committed and len(committed) < n, "the signal arrived after the run had finished"
    stored = dict(db_rows(lib_dir, "SELECT path, content_hash FROM files WHERE status='ok'"))
    for p, h in committed.items():
        assert stored.get(os.fsencode(p)) == h
    seq = int(db_rows(lib_dir, "SELECT value FROM meta WHERE key='seq'")[0][0])
    _, header = VectorIndex.load(lib_dir / "index.faiss")
    assert header.watermark_seq == seq
    assert not list(lib_dir.glob("index.faiss.tmp.*"))
    with Library.open(lib_dir, create=False) as lib:
        assert lib.check().ok
        remaining = n - len(stored)
        report = lib.index([photos])
        assert report.embedded == remaining and report.unchanged == len(stored)
        assert lib.check().ok and lib.status()["images"] == n


# -- the CLI's held interrupts, unit by unit ----------------------------------------------------------------
def fake_library_code(name: str, source: str):
    """A function whose frames look like `name`'s (the handler decides by a frame's file name)."""
    namespace: dict = {}
    exec(compile(source, f"{os.sep}site-packages{os.sep}{name}{os.sep}fake.py", "exec"), namespace)
    return namespace


@pytest.fixture
def held(monkeypatch):
    from clipsearch.cli_interrupts import HeldInterrupts

    kills = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: kills.append(sig))
    previous = signal.getsignal(signal.SIGINT)
    with pytest.MonkeyPatch.context():
        yield HeldInterrupts, kills
    assert signal.getsignal(signal.SIGINT) is previous  # restored


def test_a_signal_inside_sqlalchemy_is_raised_in_its_caller(held):
    cls, kills = held
    steps = []
    lib = fake_library_code("sqlalchemy", """
def work(deliver, steps):
    deliver()                # the signal arrives here, inside "SQLAlchemy"
    steps.append("sqlalchemy finished its work")
""")

    def caller(interrupts):
        lib["work"](lambda: interrupts._handler(signal.SIGINT, sys._getframe(1)), steps)
        steps.append("caller went on")  # never reached: raised at this line

    with pytest.raises(KeyboardInterrupt):
        with cls() as interrupts:
            try:
                caller(interrupts)
            finally:
                steps.append(sys.gettrace())
    assert steps == ["sqlalchemy finished its work", None]  # and tracing is off again
    assert kills == []


def test_a_signal_outside_is_raised_at_once_and_terminated_for_sigterm(held):
    from clipsearch.cli import Terminated

    cls, _ = held
    with pytest.raises(Terminated):
        with cls(terminated=Terminated) as interrupts:
            interrupts._handler(signal.SIGTERM, sys._getframe())
    with pytest.raises(KeyboardInterrupt) as e:
        with cls() as interrupts:
            interrupts._handler(signal.SIGINT, sys._getframe())
    assert not isinstance(e.value, Terminated)


def test_a_held_signal_is_raised_at_the_checkpoint_or_the_end_and_a_second_one_exits(held):
    cls, kills = held
    lib = fake_library_code("clipsearch" + os.sep + "store", """
import sys

def then(signal_, after):
    signal_()               # held: this frame is the catalog's
    sys.settrace(None)      # no line of the caller runs again before `after` (the delivery there is tested above)
    return after()

def twice(signal_, after):
    signal_()
    signal_()
    after()
""")

    def interrupt(interrupts):
        return lambda: interrupts._handler(signal.SIGINT, sys._getframe())

    with pytest.raises(KeyboardInterrupt):
        with cls() as interrupts:
            lib["then"](interrupt(interrupts), interrupts.checkpoint)  # raised by the checkpoint
    with pytest.raises(KeyboardInterrupt):
        with cls() as interrupts:
            lib["then"](interrupt(interrupts), lambda: "still held")  # raised when the command ends
    with cls() as interrupts:
        lib["twice"](interrupt(interrupts), interrupts._take)  # the second: exit at once (os.kill is a fake here,
        assert kills == [signal.SIGINT] and signal.getsignal(signal.SIGINT) == signal.SIG_DFL  # so forget the first)
    assert sys.gettrace() is None


# -- a Ctrl-C at every point of a run ------------------------------------------------------------------------
# A real signal lands wherever the main thread is (at a function's entry or a loop's back edge). The driver
# below (run in a child process by the tests) traces the main thread during `clipsearch index`, and at the
# n-th traced event calls the SIGINT handler then installed with that frame, as the interpreter would for a
# real Ctrl-C there; for n = start, start + stride, ... until a run ends before its n-th event. After each
# run: exit status 130, nothing on stderr but the one "Interrupted" line (no traceback, no "Exception
# ignored", no logged error), the lock free, `check` ok, and a second run indexes every file.

INTERRUPTED = "Interrupted; every committed batch is kept, the rest is indexed by the next run."


def interrupt_driver(work: Path, start: int, stride: int, events: set[str], functions: set[str] | None,
                     max_trials: int) -> None:
    import gc
    import shutil

    from clipsearch.cli import cli
    from clipsearch.library import Library as LibraryClass
    from reliability_helpers import FakeEncoder

    photos, template = work / "photos", work / "template"
    enc = FakeEncoder()
    for i in range(8):
        make_image(photos / f"old{i}.png", i, size=(8, 8))
    with Library.open(template, encoder=enc, batch_size=4) as lib:
        lib.index([photos])
    for i in range(6):
        make_image(photos / f"new{i}.png", 100 + i, size=(8, 8))
    (photos / "old0.png").unlink()
    want = {os.fsencode(p) for p in photos.iterdir()}
    LibraryClass.encoder = property(lambda self: enc)
    saved_stderr = os.dup(2)
    main = threading.main_thread()
    n, trials, fired_last = start, 0, True

    def in_index_command(frame) -> bool:
        while frame is not None:
            if frame.f_code.co_name == "index" and frame.f_code.co_filename.endswith("cli.py"):
                return True
            frame = frame.f_back
        return False

    while fired_last and trials < max_trials:
        lib_dir = work / "lib"
        shutil.rmtree(lib_dir, ignore_errors=True)
        shutil.copytree(template, lib_dir)
        count, where = [0], [None]

        def tracer(frame, event, arg):
            if (event in events and (functions is None or frame.f_code.co_name in functions)
                    and threading.current_thread() is main and where[0] is None and in_index_command(frame)):
                count[0] += 1
                if count[0] == n:
                    where[0] = f"{event} {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}"
                    handler = signal.getsignal(signal.SIGINT)
                    if not callable(handler):
                        raise KeyboardInterrupt
                    handler(signal.SIGINT, frame)
            return tracer

        err_path = work / "stderr.txt"
        fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        sys.stderr.flush()
        os.dup2(fd, 2)
        os.close(fd)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            sys.settrace(tracer)
            try:
                cli.main(["index", str(photos), "--library", str(lib_dir), "-q", "--batch-size", "4", "--workers", "2"],
                         standalone_mode=False)
                code = 0
            finally:
                sys.settrace(None)
        except SystemExit as e:
            code = e.code
        except BaseException as e:
            code = f"escaped: {e!r}"
        gc.collect()  # a connection left to the garbage collector says so now, on this run's stderr
        sys.stderr.flush()
        os.dup2(saved_stderr, 2)
        err = err_path.read_text()
        fired_last = where[0] is not None
        problems = []
        lines = err.splitlines()
        if fired_last:
            if code != 130:
                problems.append(f"exit status {code}")
            if not lines or lines[-1] != INTERRUPTED or any(not line.startswith("added ") for line in lines[:-1]):
                problems.append("stderr")
        elif code != 0 or len(lines) != 1 or not lines[0].startswith("added 6,"):
            problems.append(f"a run without a signal: {code}")
        lock = os.open(lib_dir / "lock", os.O_RDWR)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            problems.append(f"the lock is held: {e}")
        finally:
            os.close(lock)
        with Library.open(lib_dir, create=False) as lib:
            report = lib.check()
            if not report.ok:
                problems.append(f"check: {report.problems}")
            lib.index([photos])
            stored = {p for (p,) in db_rows(lib_dir, "SELECT path FROM files WHERE status='ok'")}
            if stored != want or not lib.check().ok:
                problems.append("the next run did not index every file")
        if problems:
            print(json.dumps({"n": n, "at": where[0], "problems": problems, "stderr": err[-3000:]}), flush=True)
        trials += 1
        n += stride
    print(json.dumps({"trials": trials, "events": count[0], "ended": not fired_last}), flush=True)


def run_driver(tmp_path, start: int, stride: int, events: str, functions: str = "", max_trials: int = 10**6):
    env = dict(os.environ)
    env.pop("CLIPSEARCH_HOME", None)
    proc = subprocess.run([sys.executable, __file__, str(tmp_path / "work"), str(start), str(stride), events,
                           functions, str(max_trials)], capture_output=True, text=True, env=env, timeout=3000,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    return lines[:-1], lines[-1]


# where an interrupt went wrong before: returning a connection to SQLAlchemy's pool (it logged "Exception during
# reset or similar" with a traceback), a weakref callback in garbage collection ("Exception ignored in"), a
# transaction half begun or ended (AttributeError: 'RootTransaction' object has no attribute 'is_active'), a
# context manager entered but not yet guarding its block (a write transaction left open: "database is locked"),
# threading's Condition.wait between releasing its lock and its try ("RuntimeError: release unlocked lock"),
# the writer lock taken but not yet recorded (the library stayed locked)
HOT_SPOTS = "_finalize_fairy,_reset,_close_connection,_rollback_impl,_commit_impl,_begin_impl,_collection_gced,wait,_acquire_lock"


def test_ctrl_c_inside_the_hot_spots_never_prints_a_traceback(tmp_path):
    """At every 53rd line or entry of those functions in a run (about 1700; every 3rd: 580 runs, 180 of which
    printed a traceback or left the library locked before the fix)."""
    failures, summary = run_driver(tmp_path, 1, 53, "call,line", HOT_SPOTS)
    assert summary["ended"] and summary["trials"] >= 25, summary
    assert failures == [], failures[:3]


def test_ctrl_c_at_sampled_points_of_a_run_never_prints_a_traceback(tmp_path):
    """At every 12007th function entry or line of the main thread during the command (about 170 000)."""
    failures, summary = run_driver(tmp_path, 1, 12007, "call,line")
    assert summary["ended"] and summary["trials"] >= 10, summary
    assert failures == [], failures[:3]


@pytest.mark.slow
def test_ctrl_c_at_many_points_of_a_run_never_prints_a_traceback(tmp_path):
    failures, summary = run_driver(tmp_path, 1, 97, "call,line")
    assert summary["ended"] and summary["trials"] > 1000, summary
    assert failures == [], failures[:3]


if __name__ == "__main__":
    work_, start_, stride_, events_, functions_, max_trials_ = sys.argv[1:7]
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    interrupt_driver(Path(work_), int(start_), int(stride_), set(events_.split(",")),
                     set(functions_.split(",")) if functions_ else None, int(max_trials_))
