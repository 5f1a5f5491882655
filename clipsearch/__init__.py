"""clipsearch: semantic image search over folders of photos, by text or by example image.

    from clipsearch import Library
    lib = Library.open("~/my-library")
    lib.index(["~/Photos"])
    for r in lib.search("a dorsal hand", k=5):
        print(r.path, r.score)
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["Library", "Result", "IndexReport", "ClipSearchError", "__version__"]


def __getattr__(name):  # keep `import clipsearch` light: nothing heavy until it is used
    if name == "Library":
        from .library import Library

        return Library
    if name == "Result":
        from .search import Result

        return Result
    if name == "IndexReport":
        from .indexer import IndexReport

        return IndexReport
    if name == "ClipSearchError":
        from .errors import ClipSearchError

        return ClipSearchError
    raise AttributeError(f"module 'clipsearch' has no attribute {name!r}")
