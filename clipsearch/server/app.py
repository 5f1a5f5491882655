"""The ASGI app: the page, its static files and the JSON API, behind the security middleware.

    app = create_app(Reader.open("~/my-library"))                       # 127.0.0.1 / localhost only
    app = create_app(reader, token=t, allowed_hosts=(...), allow_ip_hosts=True)   # reachable from elsewhere
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..errors import (ClipSearchError, ConfigError, EmptyLibraryError, ImageError, LibraryError, LibraryNotFoundError,
                      ModelError, NotFoundError)
from . import api
from .api import AsciiJSONResponse
from .files import RefusedError
from .security import LOOPBACK_HOSTS, HostRules, SecurityMiddleware
from .thumbs import DEFAULT_CACHE_BYTES, ThumbnailStore
from .uploads import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, UploadStore, UploadTooLarge

STATIC = Path(__file__).resolve().parent / "static"
THUMBS_DIR = "thumbs"
UPLOADS_AT_ONCE = 4  # example images held in memory at once (each up to upload_max_bytes)


@dataclass
class ServerContext:
    reader: object
    thumbs: ThumbnailStore
    uploads: UploadStore
    upload_max_bytes: int
    upload_max_pixels: int
    render_slots: threading.BoundedSemaphore
    upload_slots: asyncio.Semaphore


# the most specific class first
_STATUS = [(RefusedError, 403), (NotFoundError, 404), (UploadTooLarge, 413), (ImageError, 415), (ConfigError, 400),
           (EmptyLibraryError, 409), (LibraryNotFoundError, 409), (ModelError, 503), (LibraryError, 503)]


def status_for(error: ClipSearchError) -> int:
    for cls, code in _STATUS:
        if isinstance(error, cls):
            return code
    return 500


def create_app(reader, *, token: str | None = None, allowed_hosts=LOOPBACK_HOSTS, allow_ip_hosts: bool = False,
               thumbs_dir: str | os.PathLike | None = "default", thumb_cache_bytes: int = DEFAULT_CACHE_BYTES,
               upload_dir: str | os.PathLike | None = None, upload_max_bytes: int = DEFAULT_MAX_BYTES,
               upload_max_pixels: int = DEFAULT_MAX_PIXELS, render_threads: int | None = None) -> FastAPI:
    """The web app over a Reader.

    allowed_hosts: the Host header values it answers (`name` or `name:port`); allow_ip_hosts also
    accepts any IP address (for a server bound to every interface: a rebinding attack needs a name).
    token: required on every request when given. thumbs_dir: where thumbnails are cached ("default":
    the library's thumbs/; None: not cached). upload_dir: where uploaded example images are kept
    (default: a private temporary folder), removed at shutdown.
    """
    if thumbs_dir == "default":
        thumbs_dir = Path(reader.path) / THUMBS_DIR
    uploads = UploadStore(Path(upload_dir) if upload_dir is not None else None)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        try:
            yield
        finally:
            uploads.close()

    # no /docs (its page loads scripts from a CDN) and no telemetry, even if the environment asks for exporters
    app = FastAPI(title="clipsearch", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan,
                  telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False,
                             "auto_configure": False},
                  default_response_class=AsciiJSONResponse,
                  description="Search a clipsearch library by words, by example images and by indexed images. "
                              "Images are named by their database id.")
    app.state.clipsearch = ServerContext(
        reader=reader, thumbs=ThumbnailStore(thumbs_dir, max_bytes=thumb_cache_bytes), uploads=uploads,
        upload_max_bytes=upload_max_bytes, upload_max_pixels=upload_max_pixels,
        render_slots=threading.BoundedSemaphore(render_threads or max(1, min(4, os.cpu_count() or 1))),
        upload_slots=asyncio.Semaphore(UPLOADS_AT_ONCE))

    @app.exception_handler(ClipSearchError)
    async def clipsearch_error(request: Request, error: ClipSearchError):
        return AsciiJSONResponse({"detail": str(error)}, status_code=status_for(error),
                                 headers={"Cache-Control": "no-store"})

    app.include_router(api.router)
    index_html = (STATIC / "index.html").read_bytes()

    @app.get("/", include_in_schema=False)
    def page():
        return HTMLResponse(index_html, headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC, follow_symlink=False), name="static")
    app.add_middleware(SecurityMiddleware, hosts=HostRules(tuple(allowed_hosts), allow_ip_literals=allow_ip_hosts),
                       token=token)
    return app
