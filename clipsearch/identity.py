"""The model identity a library records: which weights built its vectors, checked on every index and query.

The catalog's meta holds, from the first vectors on:

    model                   the --model value the library loads (a name or a path; it may change, see below)
    model_fingerprint       a short id of the identity (the vector cache's header carries it)
    model_fingerprint_json  the identity: architecture, weights ("sha256:..." of the weights file), dimension,
                            image preprocessing; plus "model", the name, which is not part of the identity
    model_weights_json      where the weights were found: the file's real path, its stat identity (size,
                            mtime_ns, ctime_ns, inode), its sha256, and the text tower's config

Every full load of the model hashes the file it resolved (a per-user memo keyed by the file's identity
spares the time, never the check); the light text path (encoders/textfast.py) reads the recorded file and
trusts the recorded hash only while the file's stat identity is unchanged. Either way, other weights under
the same name are refused, naming both. The name is not part of the identity: a checkpoint folder that was
moved is accepted under its new path when its weights are the same, and the library then records the new
name. Libraries from before the weights hash was recorded for ARCH:TAG models (fingerprint weights
"pretrained:TAG") get the hash on their next full load.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from .errors import ClipSearchError, ModelMismatchError
from .store import Catalog, dumps

logger = logging.getLogger(__name__)

NOT_IDENTITY = ("model",)


def fingerprint_id(fp: dict) -> str:
    return hashlib.sha256(dumps(_identity(fp)).encode()).hexdigest()[:16]


def _identity(fp: dict) -> dict:
    return {k: v for k, v in fp.items() if k not in NOT_IDENTITY}


def _short(weights) -> str:
    from .encoders._common import short_weights

    return short_weights(weights)


def _mismatch(path: Path, stored: dict, default_name: str | None, fp: dict, differs: list[str]) -> ModelMismatchError:
    what = f" (they differ in {', '.join(differs)})" if differs and differs != ["weights"] else ""
    return ModelMismatchError(
        f"the library at {path} was built with model {stored.get('model', default_name)} "
        f"(weights {_short(stored.get('weights'))}, dim {stored.get('dim')}); the model now loaded is "
        f"{fp.get('model')} (weights {_short(fp.get('weights'))}, dim {fp.get('dim')}){what}. Its vectors would "
        f"not be comparable; index into another --library"
    )


def _differs(stored: dict, fp: dict, keys=None) -> list[str]:
    keys = keys if keys is not None else sorted((set(stored) | set(fp)) - set(NOT_IDENTITY))
    return [k for k in keys if stored.get(k) != fp.get(k)]


def _legacy_label(name: str) -> str | None:
    """What libraries used to record as the weights of a model fetched by name (no hash), if anything."""
    from .encoders import parse_model_spec

    try:
        spec = parse_model_spec(name)
    except ClipSearchError:
        return None
    if spec.kind == "pretrained":
        return f"pretrained:{spec.pretrained}"
    return spec.name if spec.kind == "hf-hub" else None


def _record(meta: dict) -> dict | None:
    try:
        rec = json.loads(meta.get("model_weights_json") or "null")
    except ValueError:
        return None
    return rec if isinstance(rec, dict) else None


def check_fingerprint(catalog: Catalog, path: Path, encoder) -> None:
    """Record the encoder's identity in a library that has none; refuse one that differs (naming both);
    follow a model whose name or weights file moved while its weights stayed the same."""
    fp = json.loads(dumps(encoder.fingerprint))  # as stored: tuples are lists
    source = getattr(encoder, "weights_source", None)
    meta = catalog.all_meta()
    if meta.get("model_fingerprint") is None:
        values = dict(model_fingerprint=fingerprint_id(fp), model_fingerprint_json=dumps(fp), dim=str(encoder.dim))
        if source:
            values["model_weights_json"] = dumps(source)
        catalog.set_meta(**values)
        return
    stored = json.loads(meta.get("model_fingerprint_json") or "{}")
    weights = stored.get("weights")
    legacy = _legacy_label(fp.get("model", ""))
    if (legacy and weights == legacy and stored.get("model") == fp.get("model") and source
            and not _differs(stored, fp, [k for k in _identity(fp) if k != "weights"])):
        # an ARCH:TAG library from before weights were hashed: these weights are its weights from now on
        logger.info("the library at %s now records the weights of %s: %s (it had only %s)", path, fp.get("model"),
                    _short(fp.get("weights")), weights)
        _write(catalog, model_fingerprint_json=dumps(fp), model_weights_json=dumps(source))
        return
    differs = _differs(stored, fp)
    if differs:
        raise _mismatch(path, stored, meta.get("model"), fp, differs)
    _follow(catalog, meta, path, fp.get("model"), source)


def check_text_fingerprint(catalog: Catalog, path: Path, light) -> None:
    """The light text tower must be the library's model too: architecture, weights and dimension."""
    meta = catalog.all_meta()
    stored = json.loads(meta.get("model_fingerprint_json") or "{}")
    mine = json.loads(dumps(light.fingerprint))
    differs = _differs(stored, mine, ["arch", "weights", "dim"])
    if differs:
        raise _mismatch(path, stored, meta.get("model"), mine, differs)
    _follow(catalog, meta, path, mine.get("model"), getattr(light, "weights_source", None))


def _follow(catalog: Catalog, meta: dict, path: Path, name: str | None, source: dict | None) -> None:
    """The same weights, found under another name or at another place: record where they are now."""
    from .encoders._common import same_file

    values = {}
    if name and name != meta.get("model"):
        logger.info("the library at %s now uses model %s (the same weights as %s)", path, name, meta.get("model"))
        values["model"] = name
    old = _record(meta)
    if source and not (old and same_file(old, source) and old.get("sha256") == source.get("sha256")
                       and (old.get("text") or not source.get("text"))):
        values["model_weights_json"] = dumps({**source, "text": source.get("text") or (old or {}).get("text")})
    if values:
        _write(catalog, **values)


def _write(catalog: Catalog, **values: str) -> None:
    """Meta written on the way (a query may run where the library cannot be written): the check has passed
    already, so a failed write costs only a rehash next time."""
    import sqlalchemy as sa

    try:
        catalog.set_meta(**values)
    except (sa.exc.DBAPIError, OSError) as e:
        logger.debug("could not update the library's model record: %s", e)


def check_model_name(catalog: Catalog, path: Path, stored: str, wanted: str) -> None:
    """`wanted` is not the library's model name: accept it only when it names a local checkpoint or weights
    file holding the library's weights (a moved checkpoint); refuse it otherwise, naming both."""
    from .encoders import parse_model_spec
    from .encoders._common import find_weights, sha256_file, weights_label

    fp = json.loads(catalog.get_meta("model_fingerprint_json") or "{}")
    theirs = None
    try:
        spec = parse_model_spec(wanted)
    except ClipSearchError:
        spec = None
    if spec is not None and spec.kind in ("builtin", "dir", "file"):
        weights = find_weights(spec.path) if spec.kind != "file" else spec.path
        if weights is not None:
            theirs = weights_label(sha256_file(weights))
    if theirs is not None and theirs == fp.get("weights"):
        return
    ours = f" (weights {_short(fp.get('weights'))})" if fp.get("weights") else ""
    other = f" (weights {_short(theirs)})" if theirs else ""
    raise ModelMismatchError(
        f"the library at {path} was built with model {stored}{ours}; it cannot be used with {wanted}{other}. "
        f"Leave out --model to use {stored}, or give another --library for {wanted}"
    )


def recorded_weights(catalog: Catalog) -> Path | None:
    """The safetensors file the library recorded for its weights, when it is there (what other readers of the
    checkpoint, such as cutoff.model_logit_scale, should read: it is the library's, not a name's latest)."""
    record = _record(catalog.all_meta()) or {}
    if not record.get("path") or record.get("format") != "safetensors":
        return None
    path = Path(record["path"])
    return path if path.is_file() else None


def load_light_text_encoder(catalog: Catalog, path: Path, model_name: str):
    """The library's text tower in numpy (no torch import), checked against the library; None when it
    does not cover this model (the full model answers then, and is checked itself).

    The weights are read where the library recorded them, when the library's own model is asked for and
    the file is there; a model given under another name (a moved checkpoint) is read where it now is."""
    from .encoders import parse_model_spec, textfast

    meta = catalog.all_meta()
    record = _record(meta)
    spec = parse_model_spec(model_name)
    light = None
    if record and model_name == meta.get("model") and record.get("path") and Path(record["path"]).is_file():
        light = textfast.load_text_encoder_from_record(model_name, record)
    elif spec.kind in ("builtin", "dir", "file"):
        light = textfast.load_text_encoder(spec, known=record)
    if light is not None:
        check_text_fingerprint(catalog, path, light)
    return light
