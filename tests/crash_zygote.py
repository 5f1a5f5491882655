"""A fork server for the crash harness: pays for importing torch, open_clip, faiss and SQLAlchemy once, then
forks one `clipsearch` CLI process per request (what `python -m clipsearch ...` runs, minus interpreter start).

Protocol, one JSON line each way:  -> {"argv": [...], "env": {...}, "stdout": path, "stderr": path}
                                   <- {"pid": N}   then, once the child is gone,   <- {"exit": code}
(code is negative when a signal killed the child: -9 for SIGKILL). No torch work runs before a fork.
"""

import json
import os
import sys

import faiss  # noqa: F401
import numpy  # noqa: F401
import open_clip  # noqa: F401
import PIL.Image  # noqa: F401
import sqlalchemy  # noqa: F401
import torch  # noqa: F401
from alembic import command  # noqa: F401

import clipsearch.encoders.openclip  # noqa: F401
import clipsearch.library  # noqa: F401
from clipsearch import _crashpoints, cli


def serve() -> None:
    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                devnull = os.open(os.devnull, os.O_RDONLY)
                os.dup2(devnull, 0)
                for fd, path in ((1, req["stdout"]), (2, req["stderr"])):
                    out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    os.dup2(out, fd)
                os.environ.update(req.get("env", {}))
                _crashpoints.configure(os.environ)
                sys.argv = ["clipsearch", *req["argv"]]
                try:
                    cli.main()
                    code = 0
                except SystemExit as e:
                    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"exit": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    serve()
