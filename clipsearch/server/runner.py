"""Running the app with uvicorn on a socket bound first (so the real port is known before it starts,
and `--port 0` works), in the calling thread (the CLI) or a background thread (tests, benchmarks)."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on such sockets' connections, and without it a
    # keep-alive response waits ~40 ms for the client's delayed ACK (Nagle's algorithm; measured)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(128)  # connections wait in the backlog until uvicorn accepts them
    except BaseException:
        sock.close()
        raise
    return sock


def make_server(app, *, log_config=None, log_level: str = "warning"):
    """A uvicorn server for the app: no access log (a token in a URL must not reach a log), no proxy headers
    (X-Forwarded-* are not trusted), no server header."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            """Ctrl-C or SIGTERM stops serving (a second one at once); uvicorn's own version raises the signal
            again afterwards, inside asyncio's runner, which prints a traceback instead of a clean stop."""
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    config = uvicorn.Config(app, log_config=log_config, log_level=log_level, access_log=False, proxy_headers=False,
                            server_header=False, lifespan="on", timeout_keep_alive=5)
    return Server(config)


class ServerThread:
    """uvicorn serving `app` on 127.0.0.1 (by default) in a background thread:

        with ServerThread(app) as s:
            httpx.get(s.url + "/api/status")
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        self.sock = bind(host, port)
        self.port = self.sock.getsockname()[1]
        self.host = host
        self.server = make_server(app)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                       name="clipsearch-server")

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 60.0) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:  # waiting for startup, not timing it
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the web server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
