"""One BLAS thread for a query's small products, in this thread only.

A query's text tower (a handful of tokens) and its matrix-vector product over the vectors are memory
bound; numpy's OpenBLAS nevertheless wakes one thread per core for them, and when another process
keeps the other core busy its spinning threads made a query 2-3x slower (measured: text encoding p50
135 -> 56 ms, vector search 30 -> 21 ms at 100k). OpenBLAS >= 0.3.27 can limit threads for the calling
thread alone (`openblas_set_num_threads_local`), so this neither touches the rest of the process nor
other threads. Where that function is not found (another BLAS, an older OpenBLAS), nothing changes.
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


@contextlib.contextmanager
def one_thread():
    fn = _local_setter()
    if fn is None:
        yield
        return
    previous = fn(1)
    try:
        yield
    finally:
        fn(previous)
