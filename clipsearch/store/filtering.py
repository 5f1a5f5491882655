"""The catalog's filter conditions: a checked query.Filters as SQLAlchemy Core conditions on `files`.

Each condition is one that an index answers (schema 0003 indexes taken_at, mtime_ns, format and width *
height; folders and glob heads are ranges of the unique `path` index), so a selective filter reads few
rows. See clipsearch/filters.py for what each filter means.
"""

from __future__ import annotations

import os

from ..filters import GlobPlan, plan_glob
from .schema import PIXELS, files_table


def prefix_range(root: bytes) -> tuple[bytes, bytes]:
    """The byte range of paths strictly inside directory `root`."""
    base = root.rstrip(b"/") + b"/"
    return base, base[:-1] + b"0"  # '0' is the byte after '/'


_NS_MIN, _NS_MAX = -(2 ** 63), 2 ** 63 - 1  # what a 64-bit integer column holds


def _ns(seconds: float) -> int:
    """A time bound in nanoseconds, clamped to the 64-bit range the column holds: a date past 2262 (or before
    1677) bounds nothing more than the range's end does, and would overflow the database's integer."""
    return max(_NS_MIN, min(_NS_MAX, round(seconds * 1e9)))


def filter_conditions(filters, path_text) -> tuple[list, "GlobPlan | None"]:
    """SQL conditions for a checked query.Filters (filters.check_filters), and the glob still to check
    exactly on the rows they select (LIKE is only a superset of the glob). `path_text(column)` is the
    backend's way of reading a bytes column as text for LIKE."""
    f = files_table.c
    conds = [f.status == "ok", f.embedding_id.is_not(None)]
    if filters.folder is not None:
        lo, hi = prefix_range(os.fsencode(filters.folder))
        conds += [f.path >= lo, f.path < hi]
    glob = None
    if filters.path_glob is not None:
        glob = plan_glob(filters.path_glob)
        if glob.upper is not None:
            conds += [f.path >= glob.prefix, f.path < glob.upper]
        conds.append(path_text(f.path).like(glob.like, escape="\\"))
    if filters.modified_after is not None:
        conds.append(f.mtime_ns >= _ns(filters.modified_after))
    if filters.modified_before is not None:
        conds.append(f.mtime_ns < _ns(filters.modified_before))
    if filters.taken_after is not None:
        conds.append(f.taken_at >= filters.taken_after)
    if filters.taken_before is not None:
        conds.append(f.taken_at < filters.taken_before)
    if filters.min_width is not None:
        conds.append(f.width >= filters.min_width)
    if filters.min_height is not None:
        conds.append(f.height >= filters.min_height)
    if filters.min_megapixels is not None:
        conds.append(PIXELS >= filters.min_megapixels * 1e6)
    if filters.max_megapixels is not None:
        conds.append(PIXELS <= filters.max_megapixels * 1e6)
    if filters.formats:
        conds.append(f.format.in_(list(filters.formats)))
    return conds, glob
