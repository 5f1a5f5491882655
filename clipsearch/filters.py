"""Search filters, checked and put in the catalog's terms: folders as byte prefixes, globs as SQL LIKE, formats.

The catalog (store/catalog.py) turns a checked `Filters` into SQL conditions, so a filter costs an
indexed look-up in the database, never a pass over every file in Python:

  folder         the path byte range of the folder (the `path` column's unique index)
  path_glob      the glob's literal head as a path range, the rest as `LIKE` (a superset: `?` and
                 `[...]` become `_`, and SQLite's LIKE ignores ASCII case), then an exact
                 fnmatch on the few rows that pass. A glob that does not start with `/` matches
                 the end of the path at a `/` (`*.png`, `2023/*`), like a shell's relative glob.
  dates          files.mtime_ns (modification) and files.taken_at (the photo's own date), both
                 indexed; "after" is inclusive, "before" exclusive. A photo whose date is unknown
                 never passes a taken_* bound.
  size           width, height and the indexed expression width * height (megapixels)
  formats        files.format, lower case (`jpg` means `jpeg`, `tif` means `tiff`)
"""

from __future__ import annotations

import calendar
import math
import os
import re
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from fnmatch import fnmatchcase

from .errors import ConfigError
from .query import Filters

FORMATS = ("jpeg", "png", "webp", "gif", "bmp", "tiff", "heif", "avif")
FORMAT_ALIASES = {"jpg": "jpeg", "jpe": "jpeg", "mpo": "jpeg", "tif": "tiff", "heic": "heif"}
LIKE_ESCAPE = "\\"


def normalise_format(name: str) -> str:
    """Pillow's or a user's format name in the catalog's spelling: `JPEG`, `jpg`, `MPO` -> `jpeg`."""
    name = name.strip().lower().lstrip(".")
    return FORMAT_ALIASES.get(name, name)


def check_filters(filters: Filters) -> Filters:
    """The filters with folder made absolute and formats normalised; ConfigError for impossible values."""
    if not isinstance(filters, Filters):
        raise ConfigError("filters must be a clipsearch.query.Filters")
    for name in ("modified_after", "modified_before", "taken_after", "taken_before", "min_megapixels",
                 "max_megapixels"):
        v = getattr(filters, name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
            raise ConfigError(f"filter {name} must be a number, not {v!r}")
    for name in ("min_width", "min_height"):
        v = getattr(filters, name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise ConfigError(f"filter {name} must be a whole number of pixels, not {v!r}")
    for lo, hi in (("modified_after", "modified_before"), ("taken_after", "taken_before"),
                   ("min_megapixels", "max_megapixels")):
        a, b = getattr(filters, lo), getattr(filters, hi)
        if a is not None and b is not None and a > b:
            raise ConfigError(f"filter {lo} ({a}) is above {hi} ({b}): no image can pass")
    raw = (filters.formats,) if isinstance(filters.formats, str) else tuple(filters.formats or ())
    if any(not isinstance(f, str) for f in raw):
        raise ConfigError("filter formats must be names like 'jpeg' or 'png'")
    formats = tuple(dict.fromkeys(normalise_format(f) for f in raw))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ConfigError(f"unknown image format {unknown[0]!r}; use one of: {', '.join(FORMATS)}")
    folder = filters.folder
    if folder is not None:
        if not isinstance(folder, (str, os.PathLike)) or not os.fspath(folder) or "\x00" in os.fspath(folder):
            raise ConfigError("filter folder must be the path of a directory")
        folder = os.path.abspath(os.path.expanduser(os.fspath(folder)))
    glob = filters.path_glob
    if glob is not None and (not isinstance(glob, str) or not glob or "\x00" in glob):
        raise ConfigError("filter path_glob must be a non-empty shell pattern such as '*.png'")
    return replace(filters, folder=folder, formats=formats)


# -- path globs ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class GlobPlan:
    """A glob as the catalog uses it: rows with `prefix <= path < upper` (when upper is not None) and whose path,
    read as text, is `LIKE like ESCAPE '\\'` are candidates; `matches(path)` is the exact answer for each.
    Globs match characters (a path's bytes read as os.fsdecode does), as LIKE's `_` does."""

    pattern: str  # the whole-path pattern (a relative glob is anchored as `*/glob`)
    prefix: bytes
    upper: bytes | None  # None: no byte range (empty prefix, or one that ends in 0xff bytes)
    like: str

    def matches(self, path: bytes) -> bool:
        return fnmatchcase(os.fsdecode(path), self.pattern)


def plan_glob(glob: str) -> GlobPlan:
    pattern = glob if glob.startswith("/") else "*/" + glob
    special = [i for i in (pattern.find("*"), pattern.find("?"), pattern.find("[")) if i >= 0]
    prefix = os.fsencode(pattern[:min(special)] if special else pattern)
    return GlobPlan(pattern, prefix, _next_prefix(prefix), _like(pattern))


def _next_prefix(prefix: bytes) -> bytes | None:
    """The smallest byte string above every string that starts with `prefix`."""
    p = prefix.rstrip(b"\xff")
    if not p:
        return None
    return p[:-1] + bytes([p[-1] + 1])


def _like(pattern: str) -> str:
    """A LIKE pattern matching every path the glob matches (and maybe a few more)."""
    out = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            out.append("%")
        elif c == "?":
            out.append("_")
        elif c == "[":
            j = _bracket_end(pattern, i)
            if j is None:  # fnmatch reads an unclosed '[' as itself
                out.append("[")
            else:
                out.append("_")
                i = j
        elif c in ("%", "_", LIKE_ESCAPE):
            out.append(LIKE_ESCAPE + c)
        else:
            out.append(c)
        i += 1
    return "".join(out)


def _bracket_end(pattern: str, i: int) -> int | None:
    """The index of the `]` closing the set that opens at pattern[i] (fnmatch's rules), or None."""
    j = i + 1
    if j < len(pattern) and pattern[j] == "!":
        j += 1
    if j < len(pattern) and pattern[j] == "]":
        j += 1
    j = pattern.find("]", j)
    return None if j < 0 else j


# -- dates ----------------------------------------------------------------------------------------
_EXIF_DATE = re.compile(r"^\s*(\d{4})[:\-/](\d{2})[:\-/](\d{2})[ T](\d{2}):(\d{2})(?::(\d{2}))?")


def parse_exif_datetime(value) -> float | None:
    """EXIF's `YYYY:MM:DD HH:MM:SS` as seconds since the epoch, the camera's wall clock read as UTC
    (EXIF carries no zone unless OffsetTimeOriginal is there; the wall clock is what a person means by
    "taken on 3 May"). None for blank, zeroed or impossible dates."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        return None
    m = _EXIF_DATE.match(value.replace("\x00", ""))
    if not m:
        return None
    y, mo, d, h, mi, s = (int(g) if g else 0 for g in m.groups())
    if y < 1800:
        return None
    try:
        dt = datetime(y, mo, d, h, mi, min(s, 59))
    except ValueError:
        return None
    return float(calendar.timegm(dt.timetuple()))


def wall_clock_iso(seconds: float | None) -> str | None:
    """A taken_at value back as the camera showed it: `2023-05-03T14:02:11` (no zone)."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, timezone.utc).replace(tzinfo=None).isoformat(timespec="seconds")


def local_iso(mtime_ns: int | None) -> str | None:
    """A modification time in this machine's zone, with its offset."""
    if mtime_ns is None:
        return None
    return datetime.fromtimestamp(mtime_ns / 1e9).astimezone().isoformat(timespec="seconds")


def parse_date(text: str, *, wall_clock: bool) -> float:
    """`2023-05-03` or `2023-05-03T14:00[:00]` as seconds since the epoch, for a filter bound.

    wall_clock=True for taken_* bounds (read as UTC, like the stored EXIF dates); False for modified_*
    bounds (this machine's zone, like the file system's times). An offset in the text is honoured."""
    try:
        dt = datetime.fromisoformat(text.strip())
    except (ValueError, AttributeError):
        raise ConfigError(f"{text!r} is not a date: use YYYY-MM-DD or YYYY-MM-DDTHH:MM") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc) if wall_clock else dt.astimezone()
    return dt.timestamp()
