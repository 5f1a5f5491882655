"""The JSON API the page uses, described at /openapi.json: search, image facts, thumbnails, originals, status.

Every image is named by its database id (the `id` of a search result: the embedding of its content);
the files behind an id come from the catalog and pass the checks in files.py. Nothing here fetches a
URL or opens a path the client names.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import time
import urllib.parse
from dataclasses import dataclass
from enum import IntEnum
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query as Q, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from .. import __version__
from ..errors import ConfigError, ImageError, NotFoundError
from ..query import MAX_K, MAX_TERMS, Filters, Query, Term, parse_terms
from . import files as F
from .thumbs import render
from .uploads import UploadTooLarge, check_image

MAX_PAGE = 1000
# days whose times in nanoseconds fit a 64-bit integer (a file's mtime is compared in ns)
MIN_DAY, MAX_DAY = dt.date(1678, 1, 1), dt.date(2261, 12, 31)
DEFAULT_PAGE = 60
IMMUTABLE = "private, max-age=31536000, immutable"

router = APIRouter(prefix="/api")


class AsciiJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: file names that are not UTF-8 travel as \\udcXX (as `--json` prints them)."""

    def render(self, content) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


class ThumbSize(IntEnum):
    grid = 256
    detail = 1024


# -- response bodies ------------------------------------------------------------------------------
class ErrorBody(BaseModel):
    detail: str


class ResultItem(BaseModel):
    model_config = ConfigDict(extra="allow")  # the engine may add fields (z, date, ...): passed through
    rank: int
    score: float
    path: str
    id: int
    thumb: str = Field(description="URL of its thumbnail")


class SearchResponse(BaseModel):
    results: list[ResultItem]
    offset: int
    limit: int
    more: bool = Field(description="whether a next page may hold more results")
    upload: str | None = Field(None, description="the uploaded example image's key, for the next pages")
    query: dict
    elapsed_ms: float


class FileInfo(BaseModel):
    path: str
    folder: str
    name: str
    size: int | None
    width: int | None = Field(description="in pixels, as it is shown (EXIF orientation applied)")
    height: int | None
    modified: str | None
    indexed: str | None


class ImageInfo(BaseModel):
    id: int
    files: list[FileInfo]
    available: bool = Field(description="whether a file of it can be shown now")
    format: str | None
    taken: str | None = Field(description="the date the photo was taken (EXIF), ISO 8601")
    thumb: str
    preview: str
    original: str


class Status(BaseModel):
    model_config = ConfigDict(extra="allow")
    library: str
    model: str | None
    dim: int | None
    images: int
    roots: list[str]
    last_index: str | None
    seq: int
    version: str


ERRORS = {400: {"model": ErrorBody, "description": "a query that cannot be run"},
          404: {"model": ErrorBody, "description": "no such image (or upload)"},
          409: {"model": ErrorBody, "description": "the library has no images yet"},
          503: {"model": ErrorBody, "description": "the model or the library cannot be used now"}}
IMAGE_ERRORS = {403: {"model": ErrorBody, "description": "its file may not be served"},
                404: {"model": ErrorBody, "description": "no such image, or its file is gone or changed"}}


# -- search ---------------------------------------------------------------------------------------
Id = Annotated[int, Field(ge=1, le=F.MAX_ID)]
Name = Annotated[str, Field(pattern=r"^[a-z0-9]{1,10}$")]


@dataclass
class SearchParams:
    q: str | None
    like: list[int]
    unlike: list[int]
    limit: int
    offset: int
    min_score: float | None
    cutoff: str | None  # None: the Query's own default
    sort: str
    filters: Filters


def _day_start(d: dt.date | None, *, days: int = 0, what: str) -> float | None:
    if d is None:
        return None
    try:
        return dt.datetime.combine(d + dt.timedelta(days=days), dt.time.min).timestamp()
    except (OverflowError, ValueError, OSError):
        raise ConfigError(f"{what} is out of range") from None


def _plain_text(value: str | None, what: str) -> str | None:
    if value is None or value == "":
        return None
    if "\x00" in value:
        raise ConfigError(f"{what} contains a NUL character")
    return value


def Day(description: str):  # noqa: N802 - a parameter declaration, like Q
    return Q(ge=MIN_DAY, le=MAX_DAY, description=f"{description} (from {MIN_DAY} to {MAX_DAY})")


def search_params(
    q: Annotated[str | None, Q(description="words, with ` + ` and ` - ` between terms and `WEIGHT:` before one, "
                                           "e.g. `2:a dog + on a beach - 0.5:at night`")] = None,
    like: Annotated[list[Id], Q(max_length=MAX_TERMS, description="ids of images to look like (more like this)")] = [],
    unlike: Annotated[list[Id], Q(max_length=MAX_TERMS, description="ids of images to look unlike (less like "
                                                                    "this)")] = [],
    limit: Annotated[int, Q(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
    offset: Annotated[int, Q(ge=0, le=MAX_K - 1)] = 0,
    min_score: Annotated[float | None, Q(allow_inf_nan=False, ge=-2, le=2)] = None,
    cutoff: Annotated[Literal["none", "auto"] | None,
                      Q(description="auto: only the results that stand out; none: all (default: "
                                    "the library's, see /api/status)")] = None,
    sort: Literal["score", "date", "path"] = "score",
    folder: Annotated[str | None, Q(max_length=4096, description="only images under this folder")] = None,
    path_glob: Annotated[str | None, Q(max_length=1024, description="a shell glob on the whole path")] = None,
    taken_from: Annotated[dt.date | None, Day(description="taken on or after this day (EXIF date)")] = None,
    taken_to: Annotated[dt.date | None, Day(description="taken on or before this day")] = None,
    modified_from: Annotated[dt.date | None, Day(description="file modified on or after this day")] = None,
    modified_to: Annotated[dt.date | None, Day(description="file modified on or before this day")] = None,
    min_width: Annotated[int | None, Q(ge=0, le=1_000_000)] = None,
    min_height: Annotated[int | None, Q(ge=0, le=1_000_000)] = None,
    min_megapixels: Annotated[float | None, Q(ge=0, le=100_000, allow_inf_nan=False)] = None,
    max_megapixels: Annotated[float | None, Q(ge=0, le=100_000, allow_inf_nan=False)] = None,
    format: Annotated[list[Name], Q(max_length=16, description="lower-case format names: jpeg, png, ...")] = [],
) -> SearchParams:
    if offset + limit > MAX_K:
        raise ConfigError(f"offset + limit must be at most {MAX_K}")
    filters = Filters(
        folder=_plain_text(folder, "folder"), path_glob=_plain_text(path_glob, "path_glob"),
        modified_after=_day_start(modified_from, what="modified_from"),
        modified_before=_day_start(modified_to, days=1, what="modified_to"),
        taken_after=_day_start(taken_from, what="taken_from"),
        taken_before=_day_start(taken_to, days=1, what="taken_to"),
        min_width=min_width, min_height=min_height, min_megapixels=min_megapixels, max_megapixels=max_megapixels,
        formats=tuple(dict.fromkeys(format)),
    )
    return SearchParams(q=q, like=list(like), unlike=list(unlike), limit=limit, offset=offset, min_score=min_score,
                        cutoff=cutoff, sort=sort, filters=filters)


def build_query(p: SearchParams, upload_path: str | None = None) -> Query:
    """The Query a request asks for (k covers its page)."""
    terms: list[Term] = []
    if p.q is not None and p.q.strip():
        terms.extend(parse_terms(p.q))  # refuses NUL, megabytes, empty terms
    terms.extend(Term.like(i, 1.0) for i in p.like)
    terms.extend(Term.like(i, -1.0) for i in p.unlike)
    if upload_path is not None:
        terms.append(Term.image(upload_path))
    if not terms:
        raise ConfigError("nothing to search for: give words (q), an image id (like) or an example image")
    options = {} if p.cutoff is None else {"cutoff": p.cutoff}
    return Query(terms=tuple(terms), k=p.offset + p.limit, min_score=p.min_score, filters=p.filters, sort=p.sort,
                 **options)


def query_defaults() -> dict:
    """What a search does when the request does not say (the Query's own defaults)."""
    fields = {f.name: f.default for f in dataclasses.fields(Query)}
    return {"cutoff": fields["cutoff"], "sort": fields["sort"]}


def _run_search(request: Request, p: SearchParams, upload: str | None) -> Response:
    ctx = request.app.state.clipsearch
    path = None
    if upload is not None:
        path = ctx.uploads.path(upload)
        if path is None:
            raise NotFoundError("that uploaded image is no longer kept by the server: choose or drop it again")
    query = build_query(p, path)
    t = time.perf_counter()
    results = ctx.reader.search(query)
    elapsed = (time.perf_counter() - t) * 1000
    page = results[p.offset:]
    described = query.to_dict()
    for term in described["terms"]:
        if term["kind"] == "image":
            term["value"] = f"upload:{upload}"
    body = {
        "results": [{**r.to_dict(), "thumb": f"/api/images/{r.embedding_id}/thumb"} for r in page],
        "offset": p.offset, "limit": p.limit, "more": len(results) == query.k and query.k < MAX_K,
        "upload": upload, "query": described, "elapsed_ms": round(elapsed, 3),
    }
    # sent as it is: validating up to a thousand results against the response model costs milliseconds, and
    # the body is built right here (the schema tests check it against the description)
    return AsciiJSONResponse(body)


@router.get("/search", response_model=SearchResponse, responses=ERRORS)
def search(request: Request, params: Annotated[SearchParams, Depends(search_params)],
           upload: Annotated[str | None, Q(max_length=64, description="key of an uploaded example image "
                                                                      "(returned by POST /api/search/image)")] = None):
    """Search by words, by indexed images (like / unlike) and by an uploaded example image, with filters."""
    return _run_search(request, params, upload or None)


_BINARY = {"schema": {"type": "string", "format": "binary"}}
UPLOAD_BODY = {"requestBody": {"required": True, "description": "the image file's bytes",
                               "content": {"application/octet-stream": _BINARY, "image/*": _BINARY}}}


@router.post("/search/image", response_model=SearchResponse, openapi_extra=UPLOAD_BODY,
             responses={**ERRORS, 413: {"model": ErrorBody, "description": "the file is over the byte or pixel cap"},
                        415: {"model": ErrorBody, "description": "not an image"}})
async def search_by_image(request: Request, params: Annotated[SearchParams, Depends(search_params)]):
    """Search by an example image sent as the request body (capped in bytes and pixels), with the same
    words, ids and filters as GET /api/search. The answer's `upload` names it for the next pages."""
    ctx = request.app.state.clipsearch
    ctype = request.headers.get("content-type", "application/octet-stream").split(";")[0].strip().lower()
    if not (ctype == "application/octet-stream" or ctype.startswith("image/")):
        raise ImageError("send the image file itself as the body (Content-Type image/* or application/octet-stream)")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > ctx.upload_max_bytes:
        raise UploadTooLarge(f"the uploaded file is over the {ctx.upload_max_bytes // (1024 * 1024)} MiB limit")
    async with ctx.upload_slots:  # a few uploads in memory at a time, however many arrive
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > ctx.upload_max_bytes:
                raise UploadTooLarge(f"the uploaded file is over the {ctx.upload_max_bytes // (1024 * 1024)} MiB "
                                     f"limit")
            chunks.append(chunk)
        data = b"".join(chunks)

        def run():
            check_image(data, max_pixels=ctx.upload_max_pixels)
            return _run_search(request, params, ctx.uploads.put(data))

        return await run_in_threadpool(run)


# -- images ---------------------------------------------------------------------------------------
def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    try:
        return dt.datetime.fromtimestamp(seconds).isoformat(timespec="seconds")
    except (OverflowError, ValueError, OSError):
        return None


@router.get("/images/{image_id}", response_model=ImageInfo, responses=IMAGE_ERRORS)
def image_info(request: Request, image_id: str):
    """An image's files (paths, sizes, dates) and what its file says about itself (format, date taken)."""
    catalog = request.app.state.clipsearch.reader.catalog
    iid = F.parse_id(image_id)
    rows = catalog.image_files(iid)
    if not rows:
        raise NotFoundError(f"no indexed image with id {iid}")
    try:
        live = [f for f in F.locate(catalog, iid) if F.unchanged(f)]  # facts only from the very file indexed
    except NotFoundError:
        live = []
    facts = F.photo_facts(live[0]) if live else {"format": None, "taken": None, "turned": False}
    out_files = []
    for r in rows:
        p = os.fsdecode(r["path"])
        w, h = (r["height"], r["width"]) if facts["turned"] else (r["width"], r["height"])
        out_files.append({"path": p, "folder": os.path.dirname(p), "name": os.path.basename(p), "size": r["size"],
                          "width": w, "height": h,
                          "modified": _iso(r["mtime_ns"] / 1e9 if r["mtime_ns"] is not None else None),
                          "indexed": _iso(r["indexed_at"])})
    base = f"/api/images/{iid}"
    return {"id": iid, "files": out_files, "available": bool(live), "format": facts["format"],
            "taken": facts["taken"], "thumb": f"{base}/thumb", "preview": f"{base}/thumb?size={ThumbSize.detail.value}",
            "original": f"{base}/original"}


@router.get("/images/{image_id}/thumb", response_class=Response,
            responses={200: {"content": {"image/webp": {}, "image/jpeg": {}}, "description": "the thumbnail"},
                       304: {"description": "not modified"}, **IMAGE_ERRORS})
def thumbnail(request: Request, image_id: str, size: ThumbSize = ThumbSize.grid):
    """A thumbnail (EXIF-rotated, at most `size` px a side), cached on disk; never the original."""
    ctx = request.app.state.clipsearch
    iid = F.parse_id(image_id)
    files = F.locate(ctx.reader.catalog, iid)
    content_hash = files[0].content_hash
    etag = ctx.thumbs.etag(content_hash, int(size))
    headers = {"ETag": etag, "Cache-Control": IMMUTABLE}
    if etag in _etags(request.headers.get("if-none-match")):
        return Response(status_code=304, headers=headers)
    data = ctx.thumbs.get(content_hash, int(size))
    if data is None:
        with ctx.render_slots:  # decoding is CPU and memory: a few at a time, however many tiles ask
            _, raw = F.first_readable(ctx.reader.catalog, iid)
            try:
                data = render(raw, int(size), max_pixels=ctx.reader.max_pixels, fmt=ctx.thumbs.format)
            except ImageError:
                raise NotFoundError(f"image {iid} cannot be decoded now") from None
        ctx.thumbs.put(content_hash, int(size), data)
    return Response(data, media_type=ctx.thumbs.media_type, headers=headers)


@router.get("/images/{image_id}/original", response_class=Response,
            responses={200: {"content": {"image/*": {}}, "description": "the indexed file's bytes"}, **IMAGE_ERRORS})
def original(request: Request, image_id: str):
    """The indexed file itself, with a Content-Type from its decoded format (for opening it, not for the grid)."""
    catalog = request.app.state.clipsearch.reader.catalog
    iid = F.parse_id(image_id)
    live, data = F.first_readable(catalog, iid)
    media_type = F.CONTENT_TYPES.get(F.sniff_format(data) or "")
    if media_type is None:
        raise F.RefusedError(f"image {iid}'s file is not in a format the page serves")
    name = os.path.basename(os.fsdecode(live.row["path"]))
    quoted = urllib.parse.quote(name.encode("utf-8", "surrogateescape"), safe="")
    return Response(data, media_type=media_type, headers={
        "Content-Disposition": f"inline; filename*=UTF-8''{quoted}",
        "ETag": f'"{live.content_hash}-original"', "Cache-Control": "private, max-age=3600"})


def _etags(header: str | None) -> set[str]:
    if not header:
        return set()
    return {t.strip().removeprefix("W/") for t in header.split(",")}


# -- status ---------------------------------------------------------------------------------------
@router.get("/status", response_model=Status, responses={503: ERRORS[503]})
def status(request: Request):
    """The library's model, vector dimension, image counts, folders and last index time."""
    ctx = request.app.state.clipsearch
    return {**ctx.reader.status(), "version": __version__, "thumbnail_type": ctx.thumbs.media_type,
            "upload_max_bytes": ctx.upload_max_bytes, "upload_max_pixels": ctx.upload_max_pixels,
            "max_results": MAX_PAGE, "defaults": query_defaults()}
