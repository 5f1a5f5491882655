"""How many BLAS threads a query's small products get, in this thread only.

A query's text tower (a handful of tokens) and its matrix-vector product over the vectors are memory
bound. On an idle machine a second core adds memory bandwidth (measured on 2 cores: text encoding
28-39 ms with one thread, 18-25 ms with two). When other processes keep the cores busy, OpenBLAS's
spinning threads made a query 2-3x slower instead (text encoding p50 135 -> 56 ms, vector search
30 -> 21 ms at 100k with one thread). So `query_threads` uses every core while the 1-minute load
average leaves one idle beyond the query's own, and one thread otherwise. OpenBLAS >= 0.3.27 sets
threads for the calling thread alone (`openblas_set_num_threads_local`), so neither the rest of the
process nor other threads are touched. Where that function is not found (another BLAS, an older
OpenBLAS), nothing changes.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os

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


def _machine_busy(cores: int) -> bool:
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return True
    return load > cores - 0.5


@contextlib.contextmanager
def query_threads():
    """Every core for the products inside, or one thread when the machine is busy (see above)."""
    cores = _cores()
    with _threads(1 if cores == 1 or _machine_busy(cores) else cores):
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
