"""The CLI's logging: clipsearch's own records always, the libraries' (open_clip, huggingface_hub, Python
warnings) only with -v. CLI only: it configures the root logger and the environment."""

from __future__ import annotations

import logging
import os
import sys

import click


class _Stderr(logging.Handler):
    """Log records as lines on the current stderr: clipsearch's own always (warnings and worse, or with -v
    everything from INFO); open_clip's, huggingface_hub's and Python warnings only with -v."""

    def __init__(self):
        super().__init__()
        self.verbose = False
        self.addFilter(self._wanted)

    def _wanted(self, record) -> bool:
        if record.name == "clipsearch" or record.name.startswith("clipsearch."):
            return True
        if not self.verbose:
            return False
        # huggingface_hub installs a handler of its own (quiet unless -v): its records are not printed twice
        return not (record.name.startswith("huggingface_hub") and logging.getLogger("huggingface_hub").handlers)

    def emit(self, record):
        try:
            text = self.format(record)
            click.echo(text if record.name.startswith("clipsearch") else f"{record.name}: {text}", err=True)
        except Exception:
            self.handleError(record)


_LOG = _Stderr()


def configure_logging(verbose: bool = False) -> None:
    """The CLI's logging: one handler on the root logger (so open_clip's module-level logging calls find one
    and do not install their own), and huggingface_hub's own handler quiet unless -v (HF_HUB_VERBOSITY)."""
    root = logging.getLogger()
    if _LOG not in root.handlers:
        root.addHandler(_LOG)
    _LOG.verbose = verbose
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    logging.captureWarnings(True)
    if verbose:
        os.environ["HF_HUB_VERBOSITY"] = "info"
    elif os.environ.get("HF_HUB_VERBOSITY") in (None, "", "info"):
        os.environ["HF_HUB_VERBOSITY"] = "critical"
    if "huggingface_hub" in sys.modules:  # read at its import: set the level too when it is already loaded
        logging.getLogger("huggingface_hub").setLevel(logging.INFO if verbose else logging.CRITICAL)
