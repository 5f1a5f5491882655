"""`clipsearch serve`: a local web page and JSON API over a library (needs the `web` extra: fastapi, uvicorn).

    from clipsearch import Reader
    from clipsearch.server import create_app
    app = create_app(Reader.open("~/my-library"))     # any ASGI server; runner.py starts uvicorn

app.py builds the app, api.py holds the routes, security.py the host/origin/token checks every
request passes, files.py the only way from an image id to a file, thumbs.py the thumbnail cache,
uploads.py the uploaded example images, static/ the page (plain HTML, CSS and JavaScript).
"""

from __future__ import annotations

from .app import create_app

__all__ = ["create_app"]
