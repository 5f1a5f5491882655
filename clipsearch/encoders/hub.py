"""Finding the weights of `ARCH:TAG` and `hf-hub:org/repo` models: the Hugging Face cache, or a download.

open_clip's own resolution (`open_clip.pretrained.download_pretrained`, huggingface_hub underneath) finds
the file; this module decides first whether it can. Without a network huggingface_hub retries each file
five times with back-off (51 s and 44 warnings for the default model, measured), so when the weights are
not in the cache the hub is probed first with a short connection timeout, and an unreachable hub is one
short message at once. `resolve` returns the local path of the weights file, so the caller loads and
hashes exactly the file that was resolved.
"""

from __future__ import annotations

import logging
import os
import socket
import urllib.parse
import urllib.request

from ..errors import ModelUnavailableError
from . import ModelSpec

logger = logging.getLogger(__name__)

PROBE_TIMEOUT = 3.0  # seconds for one TCP connection to the hub (or to the proxy in front of it)


def not_available(spec: ModelSpec, why: str, cache: str | None = None) -> ModelUnavailableError:
    """What is missing, the three ways to provide it, and the model that works offline."""
    arch = spec.arch if spec.kind == "pretrained" else "ARCH"
    here = f" (here {cache}; HF_HOME or HF_HUB_CACHE choose it)" if cache else " (HF_HOME or HF_HUB_CACHE)"
    return ModelUnavailableError(
        f"model {spec.name} is not available: {why}.\n"
        f"Provide its weights in one of three ways:\n"
        f"  - connect to the network once: open_clip fetches them into the Hugging Face cache;\n"
        f"  - give a local copy: --model {arch}:/path/to/weights.safetensors, or a checkpoint directory;\n"
        f"  - put them in the Hugging Face cache by hand{here}.\n"
        f"To try clipsearch offline now, use --model shapes (the demo model that ships with clipsearch)."
    )


def resolve(spec: ModelSpec, cache_dir: str | None = None) -> str:
    """The local weights file of a pretrained tag or an hf-hub model, downloaded if need be (and possible)."""
    import open_clip
    from huggingface_hub import constants

    cfg: dict = {}
    if spec.kind == "pretrained":
        cfg = open_clip.get_pretrained_cfg(spec.arch, spec.pretrained) or {}
        if cfg.get("file"):
            return cfg["file"]
        if not cfg.get("hf_hub"):  # a tag that only open_clip's URL download knows
            return _download(spec, lambda: open_clip.pretrained.download_pretrained(cfg, cache_dir=cache_dir))
        repo, filename = os.path.split(cfg["hf_hub"])
    else:
        repo, filename = spec.name[len("hf-hub:"):], ""
    cached = cached_weights(repo, filename, cache_dir)
    where = cache_dir or constants.HF_HUB_CACHE
    if constants.HF_HUB_OFFLINE:
        if cached:
            return cached
        raise not_available(spec, "its weights are not in the Hugging Face cache and HF_HUB_OFFLINE is set", where)
    unreachable = probe(constants.ENDPOINT)
    if unreachable:
        if cached and spec.kind == "pretrained":
            logger.info("%s cannot be reached (%s): using the cached weights %s", constants.ENDPOINT, unreachable, cached)
            return cached
        if cached:  # hf-hub models fetch their config through the hub too: only offline mode skips it
            raise not_available(spec, f"{constants.ENDPOINT} cannot be reached ({unreachable}); its weights are in "
                                      f"the Hugging Face cache, so HF_HUB_OFFLINE=1 would use them", where)
        raise not_available(spec, f"its weights are not in the Hugging Face cache and {constants.ENDPOINT} cannot "
                                  f"be reached ({unreachable})", where)
    if spec.kind == "pretrained":
        return _download(spec, lambda: open_clip.pretrained.download_pretrained(cfg, cache_dir=cache_dir))
    return _download(spec, lambda: open_clip.pretrained.download_pretrained_from_hf(repo, cache_dir=cache_dir))


def cached_weights(repo: str, filename: str, cache_dir: str | None) -> str | None:
    """The cached file open_clip would pick for repo/filename: the safetensors alternative first (as
    open_clip.pretrained.download_pretrained_from_hf does), then the named file."""
    from huggingface_hub import try_to_load_from_cache

    filename = filename or "open_clip_pytorch_model.bin"
    names = []
    if filename == "open_clip_pytorch_model.bin":
        names.append("open_clip_model.safetensors")
    elif filename.endswith((".bin", ".pth")):
        names.append(filename[:-4] + ".safetensors")
    names.append(filename)
    for name in names:
        found = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def probe(endpoint: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """None when a TCP connection to the hub (or to the proxy the environment names for it) opens within
    `timeout`; otherwise the reason, e.g. "connection refused"."""
    url = urllib.parse.urlsplit(endpoint)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    if not host:
        return f"bad endpoint {endpoint!r}"
    proxy = urllib.request.getproxies().get(url.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        p = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = p.hostname or host, p.port or 8080
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.timeout:
        return f"no answer from {host}:{port} within {timeout:g} s"
    except OSError as e:
        return (e.strerror or type(e).__name__).lower()


def _download(spec: ModelSpec, fetch) -> str:
    try:
        path = fetch()
    except (RuntimeError, OSError, ValueError) as e:
        raise not_available(spec, f"open_clip could not fetch its weights ({_first_line(e)})") from None
    except Exception as e:  # huggingface_hub raises its own tree (offline, not cached, ...)
        if type(e).__module__.startswith(("huggingface_hub", "requests", "httpx", "urllib3")):
            raise not_available(spec, f"open_clip could not fetch its weights ({_first_line(e)})") from None
        raise
    if not path or not os.path.isfile(path):
        raise not_available(spec, "open_clip found no weights file for it")
    return path


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    line = text[0] if text else ""
    return f"{type(e).__name__}: {line[:200]}".rstrip(": ")
