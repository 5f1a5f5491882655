"""The read path: one object that many threads (a web server's workers, the Python API) share.

    reader = Reader.open("~/my-library")
    reader.search(Query.parse("a dog - at night", k=20))

It holds the model and the search cache once, loads each lazily (under a lock, at most once), and sees
batches that another process commits without a restart: every search first compares the catalog's
commit sequence with the cache's watermark and catches up (under the exclusive side of a shared/exclusive
lock, so no search reads the index while it changes). It never writes the database, the cache file or
the lock.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np

from . import identity, imaging
from ._sync import SharedExclusiveLock
from .cache import SearchCache
from .errors import ConfigError, EmptyLibraryError, ImageError, LibraryNotFoundError, NotFoundError
from .query import Query
from .search import Result, execute
from .store import DB_NAME, Catalog
from .vector_index import VectorIndex

logger = logging.getLogger(__name__)

TEXT_CACHE = 256  # embed_texts calls whose answers a Reader keeps
TEXT_ENGINES = ("numpy", "onnxruntime")  # what runs the light text tower (Reader.text_encoder)


class Reader:
    """A thread-safe, read-only view of a library: searches, stored vectors, status."""

    def __init__(self, path: Path, catalog: Catalog, *, model: str, encoder=None, device: str = "auto",
                 precision: str = "auto", max_pixels: int = imaging.DEFAULT_MAX_PIXELS, owns_catalog: bool = False,
                 text_engine: str = "numpy"):
        if text_engine not in TEXT_ENGINES:
            raise ValueError(f"text_engine must be one of {', '.join(TEXT_ENGINES)}, not {text_engine!r}")
        self.path = Path(path)
        self.text_engine = text_engine
        self.catalog = catalog
        self.model_name = model
        self.device = device
        self.precision = precision
        self.max_pixels = max_pixels
        self.cache = SearchCache(self.path, catalog)
        self._owns_catalog = owns_catalog
        self._encoder = encoder
        self._injected = encoder is not None  # a caller's own encoder embeds texts too
        self._fp_checked = None
        self._text_encoder = None  # the light text tower (encoders/textfast.py); False when it does not apply
        self._image_encoder = None  # the light image tower (encoders/imagefast.py); False when it does not apply
        self._model_lock = threading.Lock()
        self._text_vectors: OrderedDict[tuple[str, ...], np.ndarray] = OrderedDict()  # embed_texts' recent answers
        self._text_lock = threading.Lock()
        self._logit_scale: tuple[float | None] | None = None
        self._index: VectorIndex | None = None
        self._index_lock = SharedExclusiveLock()

    @classmethod
    def open(cls, path: str | os.PathLike, **options) -> "Reader":
        """Open an existing library for searching (never creates one)."""
        path = Path(os.path.expanduser(os.fspath(path))).absolute()
        if not (path / DB_NAME).is_file():
            raise LibraryNotFoundError(f"no library at {path}; run `clipsearch index DIR` to create one")
        from .library import open_catalog

        catalog = open_catalog(path)
        model = catalog.get_meta("model")
        if model is None:
            catalog.close()
            raise EmptyLibraryError(f"the library at {path} has no model yet; run `clipsearch index DIR`")
        try:
            return cls(path, catalog, model=model, owns_catalog=True, **options)
        except BaseException:
            catalog.close()
            raise

    def close(self) -> None:
        if self._owns_catalog:
            self.catalog.close()

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the model ------------------------------------------------------------------------------
    @property
    def encoder(self):
        """The library's model, loaded on first use and checked against the recorded fingerprint."""
        if self._encoder is None:
            with self._model_lock:
                if self._encoder is None:
                    from .encoders import load_encoder

                    self._encoder = load_encoder(self.model_name, device=self.device, precision=self.precision)
        encoder = self._encoder
        if self._fp_checked is not encoder:
            identity.check_fingerprint(self.catalog, self.path, encoder)
            self._fp_checked = encoder
        return encoder

    @property
    def encoder_loaded(self) -> bool:
        return self._encoder is not None

    def text_encoder(self):
        """What embeds text queries: the model's text tower in numpy float32 (no torch import, ~0.4 s to load,
        the same function as the full model in fp32) when it covers the model, no encoder was passed in and
        neither bf16/fp16 nor CUDA was asked for; the full model otherwise. The choice does not depend on
        whether the image tower was loaded first (so a query's scores do not depend on what the process did
        before). Either way the library's recorded model is checked.

        `text_engine="onnxruntime"` (what `clipsearch serve` asks for) runs that tower's transformer with ONNX
        Runtime when it is installed: ~2x faster per query after ~1-2 s of set-up (encoders/textonnx.py).
        Its products sum in another order, so its vectors agree with numpy's to float32 rounding, not bit
        for bit; one Reader keeps one engine."""
        if self._text_encoder is None:
            with self._model_lock:
                if self._text_encoder is None:
                    light = None
                    if not self._injected and self.device != "cuda" and self.precision in ("auto", "fp32"):
                        light = identity.load_light_text_encoder(self.catalog, self.path, self.model_name)
                    if light and self.text_engine == "onnxruntime":
                        light.use_onnxruntime()  # numpy stays when it cannot (textonnx.build logs why, with -v)
                    self._text_encoder = light or False
        return self._text_encoder or self.encoder

    def image_encoder(self):
        """What embeds a query's new example images: the model's image tower in numpy (no torch import) when
        encoders/imagefast.py covers the model (the demo model's ResNet) under the same conditions as the
        light text tower; the full model otherwise. Either way the library's recorded model is checked."""
        if self._image_encoder is None:
            with self._model_lock:
                if self._image_encoder is None:
                    light = None
                    if not self._injected and self.device != "cuda" and self.precision in ("auto", "fp32"):
                        light = _load_light_image_encoder(self.catalog, self.path, self.model_name)
                    self._image_encoder = light or False
        return self._image_encoder or self.encoder

    # -- the cache ------------------------------------------------------------------------------
    @property
    def dim(self) -> int | None:
        d = self.catalog.get_meta("dim")
        return int(d) if d else None

    def vector_index(self) -> VectorIndex:
        """The cache, loaded or rebuilt, and caught up with every commit so far.

        The returned index may be caught up by another thread at any time: search through `search`,
        which holds the read side of the lock while it uses the index."""
        with self._index_lock.exclusive():
            return self._refresh()

    def _refresh(self) -> VectorIndex:
        # called with the write side held
        if self._index is None:
            dim = self.dim
            if dim is None:
                raise EmptyLibraryError(f"the library at {self.path} has no images yet; run `clipsearch index DIR`")
            self._index = self.cache.load(dim)
        self.cache.catch_up(self._index)
        return self._index

    def adopt(self, index: VectorIndex) -> None:
        """Use an index the writer in this process has just built (it is caught up already)."""
        with self._index_lock.exclusive():
            self._index = index

    def _current(self) -> VectorIndex | None:
        """The index when it is loaded and caught up with the catalog (checked without the write lock)."""
        index = self._index
        if index is not None and index.watermark == self.catalog.seq:
            return index
        return None

    # -- searching ------------------------------------------------------------------------------
    def search(self, query: Query | str | None = None, *, image: str | os.PathLike | None = None, k: int = 10,
               min_score: float | None = None) -> list[Result]:
        """Run a Query (or, for convenience, a text or an image= file with k and min_score)."""
        if not isinstance(query, Query):
            if (query is None) == (image is None):
                raise ConfigError("search takes a text or an image=, not both or neither")
            # the convenience form keeps what it always did: the k best (pass a Query for cutoff="auto")
            query = (Query.text(query, k=k, min_score=min_score, include_self=True, cutoff="none") if image is None
                     else Query.image(os.fspath(image), k=k, min_score=min_score, include_self=True, cutoff="none"))
        query.validate()
        if self._current() is None:
            with self._index_lock.exclusive():
                self._refresh()
        with self._index_lock.shared():
            index = self._index
            if index.ntotal == 0:
                raise EmptyLibraryError(f"the library at {self.path} has no images; run `clipsearch index DIR`")
            return execute(query, index, self.catalog, self)

    # -- term vectors ---------------------------------------------------------------------------
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """The texts' vectors. The last TEXT_CACHE calls' answers are kept: a page that asks again with another
        filter, sort or cut-off (or comes back to a search) does not run the text tower again. The tower is a
        pure function of its batch and the library's weights, which a Reader never changes, so a kept answer
        is the one the tower would give, bit for bit (a whole batch is the key: a text's last float bits depend
        on the batch it was encoded in). Not kept when the caller passed in its own encoder."""
        key = tuple(texts)
        if self._injected or not key:
            return self._encode_texts(list(key))
        with self._text_lock:
            kept = self._text_vectors.get(key)
            if kept is not None:
                self._text_vectors.move_to_end(key)
        if kept is None:
            kept = np.array(self._encode_texts(list(key)), dtype=np.float32)
            kept.setflags(write=False)
            with self._text_lock:
                self._text_vectors[key] = kept
                while len(self._text_vectors) > TEXT_CACHE:
                    self._text_vectors.popitem(last=False)
        return kept.copy()

    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        encoder = self.text_encoder()
        for text in texts:
            _warn_if_truncated(encoder, text)
        return encoder.embed_texts(texts)

    def logit_scale(self) -> float | None:
        """The library's model's logit scale (cutoff.model_logit_scale), read once."""
        if self._logit_scale is None:
            from .cutoff import model_logit_scale

            model = self.catalog.get_meta("model")
            self._logit_scale = (model_logit_scale(model, identity.recorded_weights(self.catalog)),)
        return self._logit_scale[0]

    def stored_vector(self, id_or_path: int | str) -> tuple[np.ndarray, list[bytes]]:
        """An indexed image's stored vector (by embedding id or by path) and the files that are that example:
        for an id, every live file holding that vector; for a path, that file."""
        if isinstance(id_or_path, str) and not id_or_path.isdigit():
            p = os.fsencode(os.path.abspath(os.path.expanduser(id_or_path)))  # as the indexer stores paths
            emb_id = self.catalog.file_embedding_id(p)
            if emb_id is None:
                raise NotFoundError(f"{os.fsdecode(p)} is not an indexed image of this library (to search by a "
                                    f"picture that is not indexed, give it as an example image: --image)")
            found = self.catalog.embedding(emb_id)
            if found is None:
                raise NotFoundError(f"{os.fsdecode(p)} has no stored vector in this library")
            return found[0], [p]
        emb_id = int(id_or_path)
        found = self.catalog.embedding(emb_id)
        if found is None:
            raise NotFoundError(f"no indexed image with id {emb_id} in this library")
        return found

    def embed_image_file(self, image: str | os.PathLike) -> tuple[np.ndarray, bytes | None]:
        """An example image's unit vector: the stored one when its content is indexed (no model is loaded),
        else the image tower's (`image_encoder`). Also returns the file's path as the library would store it
        when its content is in the library (so a search can leave the example itself out), else None."""
        p = Path(os.path.expanduser(os.fspath(image)))
        try:
            st = os.stat(p)
        except OSError as e:
            raise ImageError(f"cannot read query image {p}: {e.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(f"query image {p} is not a regular file")
        entry = imaging.Entry(os.fsencode(p), st.st_size, st.st_mtime_ns, st.st_ino, follow=True)  # named by the user
        try:
            data = imaging.read_file(entry)
        except ImageError as e:
            raise ImageError(f"cannot use query image {p}: {e.reason}") from None
        known = self.catalog.embedding_by_hash(imaging.content_hash(data))
        if known is not None:
            _, vector = known
            return vector, os.fsencode(os.path.abspath(p))  # the indexer stores absolute, unresolved paths
        encoder = self.image_encoder()
        try:
            img, _ = imaging.decode(data, max_pixels=self.max_pixels, draft=getattr(encoder, "image_size", 224))
        except ImageError as e:
            raise ImageError(f"cannot use query image {p}: {e.reason}") from None
        return encoder.embed_batch([encoder.preprocess(img)])[0], None

    # -- status ---------------------------------------------------------------------------------
    def status(self) -> dict:
        """What the library holds: model, dimension, counts, roots, last index time, commit sequence; and what
        embeds this Reader's texts."""
        import time

        meta = self.catalog.all_meta()
        counts = self.catalog.counts()
        last = meta.get("last_index_at")
        return {
            "library": str(self.path),
            "model": meta.get("model"),
            "model_fingerprint": meta.get("model_fingerprint"),
            "dim": int(meta["dim"]) if meta.get("dim") else None,
            "images": counts["ok"],
            "vectors": counts["vectors"],
            "failed": counts["failed"],
            "deleted": counts["deleted"],
            "roots": [os.fsdecode(r["path"]) for r in self.catalog.roots()],
            "last_index": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(float(last))) if last else None,
            "seq": int(meta.get("seq", 0)),
            "text_engine": self._text_engine_in_use(),
        }

    def _text_engine_in_use(self) -> str | None:
        """What embeds this Reader's text queries: "numpy" or "onnxruntime" (the light tower), "model" (the
        full model, or the encoder a caller passed in), None before the first text query."""
        light = self._text_encoder
        if light is None:
            return None
        return light.engine if light else "model"


def _load_light_image_encoder(catalog: Catalog, path: Path, model_name: str):
    """The library's image tower in numpy, checked against the library's recorded model; None when it does
    not cover this model or the library records no model yet (the full model answers and records it)."""
    from .encoders import parse_model_spec
    from .encoders.imagefast import load_image_encoder

    stored_json = catalog.get_meta("model_fingerprint_json")
    if not stored_json:
        return None
    light = load_image_encoder(parse_model_spec(model_name))
    if light is None:
        return None
    identity.check_text_fingerprint(catalog, path, light)  # model, arch, weights, dim: a mismatch is an error
    stored_pp = json.loads(stored_json).get("preprocess")
    if stored_pp != json.loads(json.dumps({k: light.preprocess_cfg[k] for k in sorted(light.preprocess_cfg)})):
        return None  # preprocessing recorded otherwise: let the full loader decide
    return light


def _warn_if_truncated(encoder, text: str) -> None:
    """open_clip's tokenizer cuts long texts silently: say so."""
    tokenizer, context = getattr(encoder, "tokenizer", None), getattr(encoder, "context_length", None)
    if tokenizer is None or context is None or not hasattr(tokenizer, "encode"):
        return
    n = len(tokenizer.encode(text)) + 2  # start and end tokens
    if n > context:
        logger.warning("query truncated to the first %d tokens (it has %d); only they are searched", context, n)
