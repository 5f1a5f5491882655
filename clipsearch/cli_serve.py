"""`clipsearch serve`: the web page over a library (the app is in clipsearch/server/, the `web` extra)."""

from __future__ import annotations

import os
import secrets
import socket
import sys

import click

INSTALL_HINT = "the web page needs the `web` extra: pip install 'clipsearch[web]' (FastAPI and uvicorn)"
TOKEN_ENV = "CLIPSEARCH_SERVE_TOKEN"


def register(group: click.Group) -> None:
    """Add `serve` to clipsearch's CLI group (cli.py calls this while it is being imported: the shared
    options are taken from it here, not at this module's import)."""
    from .cli import handle_errors, library_option

    group.add_command(_command(handle_errors, library_option))


def _missing_web_extra() -> str | None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        return e.name or "fastapi"
    return None


def _machine_names() -> set[str]:
    """Names a server bound to every interface may be reached by, besides IP addresses."""
    names = set()
    for name in (socket.gethostname(), socket.getfqdn()):
        if name:
            names.add(name.lower())
    return names


def plan_access(host: str, extra_hosts: tuple[str, ...], environ) -> dict:
    """Who may use the server: the Host names it answers, and the token (None on a loopback address)."""
    from .server.security import LOOPBACK_HOSTS, is_loopback

    loopback = is_loopback(host)
    bare = host.strip("[]").lower()
    wildcard = bare in ("0.0.0.0", "::", "")
    allowed = list(LOOPBACK_HOSTS) + [h.lower() for h in extra_hosts]
    if not wildcard:  # the address it is bound to (127.0.0.2 is loopback too)
        allowed.append(f"[{bare}]" if ":" in bare else bare)
    if wildcard:
        allowed.extend(sorted(_machine_names()))
    token = None
    if not loopback:
        token = environ.get(TOKEN_ENV) or secrets.token_urlsafe(32)
    return {"allowed_hosts": tuple(dict.fromkeys(allowed)), "allow_ip_hosts": wildcard, "token": token,
            "loopback": loopback}


def _run(server, sock) -> None:
    server.run(sockets=[sock])


def _command(handle_errors, library_option) -> click.Command:
    @click.command()
    @library_option
    @click.option("--host", default="127.0.0.1", show_default=True,
                  help="Address to listen on. Anything but a loopback address (127.0.0.1, ::1, localhost) makes the "
                       "page reachable from other machines: it then needs the access token printed at start.")
    @click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="0: any free port.")
    @click.option("--open", "open_browser", is_flag=True, help="Open the page in the web browser.")
    @click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME",
                  help="Another host name the page is opened by (checked against the Host header), e.g. a LAN name.")
    @click.option("--thumb-cache-mb", default=1024, show_default=True, type=click.IntRange(0),
                  help="Size cap of the thumbnail cache (the library's thumbs/ folder); 0: no cache on disk.")
    @handle_errors
    def serve(library, host, port, open_browser, allow_hosts, thumb_cache_mb):
        """Serve a web page for searching the library, with a JSON API (described at /openapi.json).

        Listens on 127.0.0.1 (this machine only) unless --host says otherwise. The model and the search
        cache stay loaded; images indexed meanwhile by `clipsearch index` appear without a restart.

        \b
        Example:
          clipsearch serve --open
          clipsearch serve --host 0.0.0.0 --port 8080     # on the network: prints a URL with the token
        """
        _serve(library, host, port, open_browser=open_browser, allow_hosts=allow_hosts,
               thumb_cache_mb=thumb_cache_mb)

    return serve


def open_reader(path):
    """The Reader a server answers from: the faster text engine (a long-lived process; Reader.text_encoder),
    with the search cache and the text model loaded (or the cache rebuilt) before the first visitor."""
    from .reader import Reader

    reader = Reader.open(path, text_engine="onnxruntime")
    try:
        reader.vector_index()
        reader.text_encoder()
    except BaseException:
        reader.close()
        raise
    return reader


def _serve(library, host: str, port: int, *, open_browser: bool, allow_hosts: tuple[str, ...],
           thumb_cache_mb: int) -> None:
    missing = _missing_web_extra()
    if missing:
        click.echo(f"Error: {INSTALL_HINT} (missing: {missing})", err=True)
        sys.exit(1)
    from .cli import default_library
    from .server import create_app
    from .server.runner import bind, make_server
    from .server.security import split_host

    for name in allow_hosts:
        if split_host(name) is None:
            raise click.BadParameter(f"not a host name: {name!r}", param_hint="--allow-host")
    access = plan_access(host, allow_hosts, os.environ)
    reader = open_reader(library or default_library())
    try:
        info = reader.status()
        try:
            sock = bind(host, port)
        except OSError as e:
            raise click.ClickException(f"cannot listen on {host}:{port}: {e.strerror or e}; "
                                       f"try another --port (0 picks a free one)") from None
        bound_port = sock.getsockname()[1]
        app = create_app(reader, token=access["token"],
                         allowed_hosts=tuple(_with_port(h, bound_port) for h in access["allowed_hosts"]),
                         allow_ip_hosts=access["allow_ip_hosts"], thumb_cache_bytes=thumb_cache_mb * 1024 * 1024)
        urls = [_url(h, bound_port, access["token"]) for h in _shown_hosts(host)]
        if access["token"]:
            click.echo(f"Warning: listening on {host}, reachable from other machines. Every request needs the "
                       f"access token; anyone with the URL below can see the library's images.", err=True)
        click.echo(f"clipsearch: {info['images']:,} images of {info['library']} (model {info['model']})", err=True)
        click.echo(f"Serving at {urls[0]}")
        for other in urls[1:]:
            click.echo(f"        or {other}")
        sys.stdout.flush()
        click.echo("Press Ctrl-C to stop.", err=True)
        sys.stderr.flush()
        server = make_server(app, log_config=_log_config())
        if open_browser:
            import webbrowser

            webbrowser.open(urls[0])  # the socket already listens: the browser's request waits in its backlog
        try:
            _run(server, sock)
        except KeyboardInterrupt:
            pass
        finally:
            sock.close()
        click.echo("clipsearch serve stopped.", err=True)
    finally:
        reader.close()


def _with_port(name: str, port: int) -> str:
    from .server.security import split_host

    return name if split_host(name)[1] is not None else f"{name}:{port}"


def _shown_hosts(host: str) -> list[str]:
    bare = host.strip("[]")
    if bare in ("0.0.0.0", "::", ""):
        return ["127.0.0.1" if bare == "0.0.0.0" else "[::1]", socket.gethostname()]
    return [f"[{bare}]" if ":" in bare else bare]


def _url(host: str, port: int, token: str | None) -> str:
    return f"http://{host}:{port}/" + (f"?token={token}" if token else "")


def _log_config() -> dict:
    """uvicorn's own errors to stderr, nothing else of logging touched."""
    return {"version": 1, "disable_existing_loggers": False,
            "formatters": {"plain": {"format": "%(levelname)s: %(message)s"}},
            "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain",
                                    "stream": "ext://sys.stderr"}},
            "loggers": {"uvicorn": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
                        "uvicorn.error": {"level": "WARNING"}, "uvicorn.access": {"handlers": [], "propagate": False}}}
