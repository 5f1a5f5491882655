"""A shared/exclusive (readers-writer) lock: the one implementation, used by the decode path (imaging.py: the
truncated-image switch) and the read path (reader.py: catching the search index up while others search it)."""

from __future__ import annotations

import threading
from contextlib import contextmanager


class SharedExclusiveLock:
    """Many holders of the shared side at once, or one of the exclusive side; a waiting exclusive holder goes
    before new shared ones (so a stream of decodes cannot starve it)."""

    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._shared = 0
        self._exclusive = False
        self._waiting_exclusive = 0
        self._waiting_shared = 0

    def acquire_shared(self) -> None:
        with self._cond:
            if self._exclusive or self._waiting_exclusive:
                self._waiting_shared += 1
                try:
                    while self._exclusive or self._waiting_exclusive:
                        self._cond.wait()
                finally:
                    self._waiting_shared -= 1
            self._shared += 1

    def release_shared(self) -> None:
        with self._cond:
            self._shared -= 1
            if not self._shared and self._waiting_exclusive:
                self._cond.notify_all()

    @contextmanager
    def shared(self):
        self.acquire_shared()
        try:
            yield
        finally:
            self.release_shared()

    @contextmanager
    def exclusive(self):
        with self._cond:
            self._waiting_exclusive += 1
            try:
                while self._exclusive or self._shared:
                    self._cond.wait()
            except BaseException:  # e.g. Ctrl-C while waiting: let the shared holders it held back go
                self._waiting_exclusive -= 1
                self._cond.notify_all()
                raise
            self._waiting_exclusive -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()

    def waiting(self) -> tuple[int, int]:
        """(shared, exclusive) holders waiting now: for tests."""
        with self._cond:
            return self._waiting_shared, self._waiting_exclusive
