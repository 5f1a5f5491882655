"""How many BLAS threads a query's small products get, in this thread only.

A query's text tower (a handful of tokens) and its matrix-vector product over the vectors are memory
bound. On an idle machine a second core adds memory bandwidth (measured on 2 cores: text encoding
28-39 ms with one thread, 18-25 ms with two). When other processes keep the cores busy, OpenBLAS's
spinning threads made a query 2-3x slower instead (text encoding p50 135 -> 56 ms, vector search
30 -> 21 ms at 100k with one thread). So `query_threads` uses the cores that other processes leave
idle, and at least one. OpenBLAS >= 0.3.27 sets threads for the calling thread alone
(`openblas_set_num_threads_local`), so neither the rest of the process nor other threads are
touched. Where that function is not found (another BLAS, an older OpenBLAS), nothing changes.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import time

_setter = None


def _local_setter():
    global _setter
    if _setter is None:
        _setter = False
        try:
            import numpy

            base = os.path.dirname(os.path.dirname(numpy.__file__))
            for path in sorted(glob.glob(os.path.join(base, "numpy.libs", "*openblas*.so*"))):
                fn = getattr(ctypes.CDLL(path), "openblas_set_num_threads_local", None)  # numpy's own copy
                if fn is not None:
                    fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_int]
                    _setter = fn
                    break
        except OSError:
            pass
    return _setter or None


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


_last_sample: tuple[float, int, float] | None = None  # (monotonic time, system busy ticks, own CPU seconds)
_last_estimate: float | None = None


def _others_load(cores: int) -> float:
    """Cores' worth of CPU that other processes used lately.

    On Linux: system-wide busy time from /proc/stat minus this process's own CPU time (all its threads,
    so OpenBLAS's spinning ones too), over the time since the previous query when that is under 10 s.
    A second call within 50 ms (the same query's search after its text) keeps the first one's answer
    and its sample. Otherwise: the 1-minute load average less the one runnable thread this query is.
    """
    global _last_sample, _last_estimate
    now = time.monotonic()
    if _last_sample is not None and _last_estimate is not None and now - _last_sample[0] < 0.05:
        return _last_estimate
    own = sum(os.times()[:2])
    try:
        with open("/proc/stat", "rb") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
        busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
    except (OSError, ValueError):
        busy = -1
    prev, _last_sample = _last_sample, (now, busy, own)
    if prev is not None and busy >= 0 and prev[1] >= 0 and now - prev[0] <= 10:
        ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        others = (busy - prev[1]) / ticks - (own - prev[2])
        _last_estimate = max(0.0, others / (now - prev[0]))
    else:
        try:
            _last_estimate = max(0.0, os.getloadavg()[0] - 1.0)
        except (AttributeError, OSError):
            _last_estimate = float(cores)
    return _last_estimate


def query_thread_count() -> int:
    """Every idle core, at least one (see above)."""
    cores = _cores()
    if cores == 1:
        return 1
    return max(1, min(cores, int(cores - _others_load(cores) + 0.5)))


@contextlib.contextmanager
def query_threads():
    """BLAS threads for the products inside: the cores other processes leave idle."""
    with _threads(query_thread_count()):
        yield


@contextlib.contextmanager
def _threads(n: int):
    fn = _local_setter()
    if fn is None:
        yield
        return
    previous = fn(n)
    try:
        yield
    finally:
        fn(previous)
