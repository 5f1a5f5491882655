"""Ctrl-C and SIGTERM for the CLI: held while the main thread is in code that a KeyboardInterrupt would leave
half done, and raised just outside it. CLI only: it sets signal handlers and a trace function."""

from __future__ import annotations

import os
import signal
import sys
import threading


class HeldInterrupts:
    """Ctrl-C and SIGTERM during `index`, raised only outside the code that handles connections, locks and files.

    Python raises KeyboardInterrupt wherever the main thread is. Inside SQLAlchemy (returning a connection to
    its pool, beginning or ending a transaction, a weakref callback during garbage collection) that printed
    tracebacks ("Exception during reset or similar", "Exception ignored in") or left its state half made, so
    that an AttributeError or an AssertionError escaped instead; in threading's Condition.wait it can leave the
    lock released ("RuntimeError: release unlocked lock"); in the catalog, the cache writer or the writer lock
    it could leave a connection, a file or the lock to the garbage collector. A signal that arrives in such
    code is held, and raised in the first frame outside it as soon as that frame runs again (or at the next
    checkpoint: after each committed batch, when the command ends). A second signal while one is held exits
    at once, as a second Ctrl-C always did (SQLite's transactions keep every committed batch).
    tests/test_crash_signals.py delivers one at every point of a run.
    """

    HOLD = tuple(os.sep + part for part in (
        f"sqlalchemy{os.sep}", f"alembic{os.sep}", "contextlib.py", "threading.py", "queue.py",
        f"concurrent{os.sep}futures{os.sep}", f"clipsearch{os.sep}store", f"clipsearch{os.sep}vector_index"))
    HOLD_FUNCTIONS = frozenset({"_acquire_lock", "_release_lock", "_try_lock"})  # clipsearch's writer lock

    def __init__(self, *, terminated: type[KeyboardInterrupt] = KeyboardInterrupt):
        self.terminated = terminated  # what SIGTERM raises

    def __enter__(self):
        self._held: type[BaseException] | None = None
        self._trace = None
        self._previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in self._previous:
            signal.signal(sig, self._handler)
        return self

    def __exit__(self, exc_type, exc, tb):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        held = self._take()
        if held is not None and exc_type is None:
            raise held()
        return False

    def checkpoint(self) -> None:
        """Raise a held signal here (in the main thread only, where signals are handled)."""
        if self._held is not None and threading.current_thread() is threading.main_thread():
            raise self._take()()

    def _take(self):
        held, self._held = self._held, None
        if held is not None:
            sys.settrace(self._trace)
        return held

    def _hold(self, code) -> bool:
        name = code.co_filename
        return (any(part in name for part in self.HOLD)
                or (code.co_name in self.HOLD_FUNCTIONS and f"{os.sep}clipsearch{os.sep}" in name))

    def _handler(self, signum, frame):
        if self._held is not None:  # a second signal: exit at once
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        exc = self.terminated if signum == signal.SIGTERM else KeyboardInterrupt
        outside = []  # the frames further out than the outermost one to hold in
        f, hold = frame, False
        while f is not None:
            if self._hold(f.f_code):
                hold, outside = True, []
            else:
                outside.append(f)
            f = f.f_back
        if not hold:
            raise exc()
        self._held = exc
        self._trace = sys.gettrace()
        for f in outside:  # whichever of them runs next raises it
            f.f_trace = self._deliver
        sys.settrace(self._untraced)  # frames' own trace functions run only while a trace function is set

    @staticmethod
    def _untraced(frame, event, arg):
        return None  # frames entered from now on are not traced

    def _deliver(self, frame, event, arg):
        frame.f_trace = None
        held = self._take()
        if held is not None:
            raise held()
