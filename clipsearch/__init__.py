"""clipsearch: semantic image search over folders of photos, by text or by example image.

    from clipsearch import Library, Query
    lib = Library.open("~/my-library")
    lib.index(["~/Photos"])
    for r in lib.search("a dorsal hand", k=5):
        print(r.path, r.score)
    lib.search(Query.parse("a dog + on a beach - at night", k=5))

    from clipsearch import Reader      # read-only, shared by many threads (a web server)
    reader = Reader.open("~/my-library")
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["ClipSearchError", "Filters", "IndexReport", "Library", "Query", "Reader", "Result", "Term", "__version__"]

_LAZY = {  # keep `import clipsearch` light: nothing heavy until it is used
    "Library": "library", "Reader": "reader", "Result": "search", "IndexReport": "indexer",
    "ClipSearchError": "errors", "Query": "query", "Term": "query", "Filters": "query",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'clipsearch' has no attribute {name!r}")
