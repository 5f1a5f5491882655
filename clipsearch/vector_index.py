"""The search cache: a FAISS `IndexIDMap2(IndexFlatIP)` over the live embeddings, ids = embedding row ids.

The only module importing faiss. The file is a container:

    MAGIC (8 bytes) | header length (4 bytes, little endian) | JSON header | faiss.serialize_index bytes

header = {format, library_uuid, model_fingerprint, dim, watermark_seq, ntotal, sha256 of the body}.
It is published with write-temp, fsync, os.replace and a directory fsync, never with
faiss.write_index (which truncates the target first). It is a cache: the catalog can always rebuild it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import _crashpoints
from .errors import IntegrityError

logger = logging.getLogger(__name__)

MAGIC = b"CLPSFAI1"
FORMAT = 1
INDEX_NAME = "index.faiss"
SHORTLIST_MIN = 20_000  # vectors from which a search first scans a float16 copy (VectorIndex._shortlist)
SAMPLE_MAX = 8192  # rows a query's score distribution is measured on (VectorIndex.sample_scores)


def _faiss():
    import faiss  # its process-wide settings (BLAS threshold, OpenMP threads) are left as they are

    return faiss


@dataclass
class CacheHeader:
    library_uuid: str
    model_fingerprint: str
    dim: int
    watermark_seq: int
    ntotal: int
    sha256: str = ""
    format: int = FORMAT


class VectorIndex:
    """An exact inner-product index keyed by embedding ids, with the commit seq it reflects."""

    def __init__(self, dim: int, index=None, watermark: int = 0):
        faiss = _faiss()
        self.dim = dim
        self.index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self.watermark = watermark
        self._coarse = None  # (float16 index, longest vector's norm) for the search shortlist, made on first use
        self._coarse_lock = threading.Lock()
        self._searches = 0
        self._id_order = None  # (sorted ids, their rows) for search_subset, made on first use
        self._sample = None  # a copy of SAMPLE_MAX evenly spaced rows for sample_scores, made on first use

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or vectors.shape[0] != len(ids):
            raise ValueError(f"expected {len(ids)} vectors of dimension {self.dim}, got shape {vectors.shape}")
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        self.remove(ids)  # idempotent: adding an id twice replaces it
        self.index.add_with_ids(vectors, ids)
        self._coarse = self._id_order = self._sample = None

    def remove(self, ids: np.ndarray) -> None:
        if len(ids) == 0 or self.ntotal == 0:
            return
        self.index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64))
        self._coarse = self._id_order = self._sample = None

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top k (scores, ids) for one query vector, FAISS's -1 padding dropped; exact, best first."""
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        if q.shape[1] != self.dim:
            raise ValueError(f"query has dimension {q.shape[1]}, the index {self.dim}")
        k = min(k, self.ntotal)
        if k <= 0:
            return np.empty(0, np.float32), np.empty(0, np.int64)
        view = self._flat_view()
        if view is None:
            scores, ids = self.index.search(q, k)
            keep = ids[0] >= 0
            return scores[0][keep], ids[0][keep]
        matrix, id_map = view
        rows = None
        self._searches += 1
        # not for the first search: a process that searches once (the CLI) would pay more for the copy than it saves
        if self._searches > 1 and len(matrix) >= SHORTLIST_MIN and k * 16 <= len(matrix):
            rows = self._shortlist(matrix, q[0], k)
        if rows is not None:
            scores = matrix[rows] @ q[0]
        else:
            # the same exact inner products as IndexFlatIP, as one BLAS matrix-vector product over the index's
            # own vectors (no copy): faster than faiss's one-query kernel (benchmarks/query_latency.py)
            from ._blas import query_threads

            rows = np.arange(len(matrix))
            with query_threads():  # memory bound: a second core helps only when it is idle (_blas.py)
                scores = matrix @ q[0]
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        return _exact_top(matrix, rows[top], q[0], id_map)

    def search_subset(self, query: np.ndarray, k: int, ids) -> tuple[np.ndarray, np.ndarray]:
        """Top k (scores, ids) among `ids` only, best first: only their rows are read and scored (a filter that
        leaves few candidates costs their vectors, not the whole index). The scores are the same inner
        products as `search`'s; ids that are not in the index are left out."""
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.dim:
            raise ValueError(f"query has dimension {q.shape[0]}, the index {self.dim}")
        rows = self.rows_of(ids)
        if k <= 0 or len(rows) == 0:
            return np.empty(0, np.float32), np.empty(0, np.int64)
        view = self._flat_view()
        if view is None:
            vectors = self.vectors()
            id_map = self.ids()
        else:
            vectors, id_map = view
        from ._blas import query_threads

        with query_threads():
            scores = vectors[rows] @ q
        k = min(k, len(rows))
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        return _exact_top(vectors, rows[top], q, id_map)

    def rows_of(self, ids) -> np.ndarray:
        """The index rows holding these ids (distinct, in no particular order); unknown ids are skipped."""
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        if len(ids) == 0 or self.ntotal == 0:
            return np.empty(0, np.int64)
        sorted_ids, rows = self._id_rows()
        at = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
        return rows[at[sorted_ids[at] == ids]]

    def _id_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """The index's ids sorted, with the row of each: built once per change (threads share it)."""
        with self._coarse_lock:
            if self._id_order is None or len(self._id_order[0]) != self.ntotal:
                id_map = self.ids()
                order = np.argsort(id_map, kind="stable")
                self._id_order = (id_map[order], order.astype(np.int64))
            return self._id_order

    def sample_scores(self, query: np.ndarray) -> np.ndarray:
        """The query's scores against every vector, or against SAMPLE_MAX evenly spaced rows when there are more:
        the distribution a result is judged against (cutoff.py). Deterministic for a given index."""
        from ._blas import query_threads

        q = np.ascontiguousarray(query, dtype=np.float32).reshape(-1)
        if self.ntotal == 0:
            return np.empty(0, np.float32)
        sample = self._sample_rows()
        with query_threads():  # a product of 8192 x dim: threads that spin help no one on a busy machine
            return sample @ q

    def _sample_rows(self) -> np.ndarray:
        """A contiguous copy of the sampled rows (a strided view's product ran 10x slower), once per change."""
        with self._coarse_lock:
            if self._sample is None or self._sample[0] != self.ntotal:
                view = self._flat_view()
                matrix = view[0] if view is not None else self.vectors()
                n = len(matrix)
                rows = np.linspace(0, n - 1, min(n, SAMPLE_MAX)).round().astype(np.int64)
                self._sample = (self.ntotal, np.ascontiguousarray(matrix[rows]))
            return self._sample[1]

    def _shortlist(self, matrix: np.ndarray, q: np.ndarray, k: int) -> np.ndarray | None:
        """Rows that surely hold the exact top k, found through a float16 copy of the vectors.

        The copy is half the bytes of the float32 vectors, and a one-query search is memory bound, so
        FAISS's float16 scan takes about half the time. Rounding to float16 moves each component by at
        most 2**-11 of itself, so a score moves by at most eps = 2**-11 |q| max|v| (Cauchy-Schwarz) plus
        float32 summation error. The float16 top m are rescored exactly in float32; when the k-th exact
        score is above the m-th float16 score + eps, no row outside them can reach the top k.
        Otherwise m grows; None means "scan everything" (then the plain float32 product is cheaper).
        """
        faiss = _faiss()
        n = len(matrix)
        coarse, vmax = self._coarse_copy(faiss, matrix)
        eps = float(np.linalg.norm(q)) * vmax * (2.0 ** -11 + self.dim * 2.0 ** -23) + 1e-6
        m = max(4 * k, k + 64)
        while m * 4 <= n:
            approx, rows = _one_thread_search(faiss, coarse, q[None], m)
            rows = rows[0][rows[0] >= 0]
            exact = matrix[rows] @ q
            kth = np.partition(exact, len(exact) - k)[len(exact) - k]
            if kth > float(approx[0][-1]) + eps:
                return rows
            m *= 4
        return None

    def _coarse_copy(self, faiss, matrix: np.ndarray):
        """The float16 copy and the longest vector's norm, built once per change (threads share it)."""
        with self._coarse_lock:
            if self._coarse is None or self._coarse[0].ntotal != len(matrix):
                coarse = faiss.IndexScalarQuantizer(self.dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
                coarse.add(matrix)  # rows in the same order as the flat index (positions, not ids)
                # the longest vector (float32 sums, so with a margin; no float64 copy of a 1M x 512 matrix)
                vmax = float(np.sqrt(np.einsum("ij,ij->i", matrix, matrix).max())) * (1 + 1e-4)
                self._coarse = (coarse, vmax)
            return self._coarse

    def _flat_view(self):
        """Zero-copy numpy views of an IDMap(IndexFlatIP)'s vectors and ids, or None for another index type."""
        faiss = _faiss()
        flat = faiss.downcast_index(self.index.index) if hasattr(self.index, "id_map") else None
        if not isinstance(flat, faiss.IndexFlatIP) or flat.ntotal != self.index.id_map.size():
            return None
        n = int(flat.ntotal)
        matrix = faiss.rev_swig_ptr(flat.get_xb(), n * self.dim).reshape(n, self.dim)
        id_map = faiss.rev_swig_ptr(self.index.id_map.data(), n)
        return matrix, id_map

    def ids(self) -> np.ndarray:
        faiss = _faiss()
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def vectors(self) -> np.ndarray:
        """All stored vectors in id-map order (for checks)."""
        flat = _faiss().downcast_index(self.index.index)
        return flat.reconstruct_n(0, self.ntotal) if self.ntotal else np.empty((0, self.dim), np.float32)

    # -- the cache file --------------------------------------------------------------------------
    def save(self, path: Path, header: CacheHeader) -> None:
        faiss = _faiss()
        body = faiss.serialize_index(self.index).tobytes()
        header.sha256 = hashlib.sha256(body).hexdigest()
        header.ntotal = self.ntotal
        header.dim = self.dim
        header.watermark_seq = self.watermark
        head = json.dumps(header.__dict__, sort_keys=True).encode()
        atomic_write(Path(path), [MAGIC, len(head).to_bytes(4, "little"), head, body])

    @classmethod
    def load(cls, path: Path) -> tuple["VectorIndex", CacheHeader]:
        """Read and verify a cache file; IntegrityError when it is damaged in any way.

        Two passes over one open file, so FAISS parses only bytes that passed the checksum: the first hashes
        the body, the second streams it into FAISS in 4 MB reads. faiss.deserialize_index on the whole body
        took 11.6 s at 1M vectors (0.3 s at 100k); this takes 3 s, most of it the disk."""
        faiss = _faiss()
        with open(path, "rb") as f:
            start = f.read(12)
            if len(start) < 12 or start[:8] != MAGIC:
                raise IntegrityError(f"{path}: not a clipsearch index cache")
            n = int.from_bytes(start[8:12], "little")
            try:
                header = CacheHeader(**json.loads(f.read(n)))
            except (ValueError, TypeError) as e:
                raise IntegrityError(f"{path}: unreadable header ({e})") from e
            body_at = f.tell()
            digest = hashlib.sha256()
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
            if digest.hexdigest() != header.sha256:
                raise IntegrityError(f"{path}: checksum mismatch")
            f.seek(body_at)
            index = faiss.read_index(faiss.PyCallbackIOReader(f.read, _CHUNK))
            trailing = bool(f.read(1))
        if trailing or index.d != header.dim or index.ntotal != header.ntotal:
            raise IntegrityError(f"{path}: header does not match its contents")
        return cls(header.dim, index, header.watermark_seq), header


_CHUNK = 1 << 22  # bytes per read of the cache file


def _exact_top(matrix: np.ndarray, rows: np.ndarray, q: np.ndarray, id_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The chosen rows' scores recomputed one way whatever found them, best first: float64 products rounded to
    float32. A BLAS float32 product's last bit depends on the matrix's shape (which kernel gets the row), so the
    full scan, the shortlist and search_subset would otherwise report a row's score differently."""
    scores = (matrix[rows].astype(np.float64) @ q.astype(np.float64)).astype(np.float32)
    order = np.argsort(-scores, kind="stable")
    return scores[order], id_map[rows[order]].astype(np.int64)


def _one_thread_search(faiss, index, q: np.ndarray, m: int):
    """index.search on one OpenMP thread (a per-thread setting, restored): for one query the scan is
    memory bound, and FAISS's second thread collided with OpenBLAS's threads still spinning after the
    text tower, doubling the time (5 -> 10 ms at 100k vectors)."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        return index.search(q, m)
    finally:
        faiss.omp_set_num_threads(before)


def atomic_write(path: Path, chunks: list[bytes]) -> None:
    """Publish a file whole or not at all: temp file, fsync, os.replace, directory fsync."""
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for i, chunk in enumerate(chunks):
                view = memoryview(chunk)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                if i == 0 and _crashpoints.ACTIVE:
                    _crashpoints.hit("mid_checkpoint")
            os.fsync(fd)
        finally:
            os.close(fd)
        if _crashpoints.ACTIVE:
            _crashpoints.hit("before_replace")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if _crashpoints.ACTIVE:
        _crashpoints.hit("after_replace")
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_orphans(directory: Path) -> None:
    """Temp files left by a writer that died mid-publish."""
    for p in Path(directory).glob(f"{INDEX_NAME}.tmp.*"):
        try:
            pid = int(p.name.rsplit(".", 1)[1])
        except ValueError:
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            p.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- near-neighbour pairs (clipsearch.tools.duplicates) ------------------------------------------
PAIRS_EXACT_MAX = 20_000  # up to this many vectors: exact range search; beyond: IVF k-NN (benchmarks/duplicates.py)


def neighbour_pairs(vectors: np.ndarray, threshold: float, *, k: int = 16, batch: int = 4096,
                    on_progress=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of rows (i < j) whose inner product is at least `threshold`: (i, j, score) arrays.

    Exact range search up to PAIRS_EXACT_MAX vectors; above, each row's k nearest neighbours through an
    inverted-file index (4 sqrt(n) lists, the query's 6 nearest probed), which finds close pairs (the
    ones a duplicate finder wants, scores well above the typical neighbour's) without comparing all pairs.
    `on_progress(done, total)` is called after each batch of query rows."""
    faiss = _faiss()
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape if x.ndim == 2 else (0, 0)
    empty = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32))
    if n < 2:
        return empty
    if n <= PAIRS_EXACT_MAX:
        index = faiss.IndexFlatIP(d)
        index.add(x)
    else:
        # many small lists, few probed: at 100k x 512 a query scans ~1,500 vectors (nlist sqrt(n), nprobe 8 scanned
        # 2,500 and took 95 s on 2 loaded cores; the whole find_duplicates now takes 25 s: benchmarks/duplicates.py)
        nlist = int(4 * np.sqrt(n))
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = 10
        index.cp.min_points_per_centroid = 1  # the sample below is smaller than faiss's default wants: no warning
        rng = np.random.default_rng(0)
        sample = x[rng.choice(n, size=min(n, nlist * 16), replace=False)]
        index.train(sample)
        index.add(x)
        index.nprobe = min(nlist, 6)
    out_i, out_j, out_s = [], [], []
    for start in range(0, n, batch):
        q = x[start:start + batch]
        if n <= PAIRS_EXACT_MAX:
            lims, scores, found = index.range_search(q, float(threshold))
            rows = np.repeat(np.arange(start, start + len(q)), np.diff(lims).astype(np.int64))
        else:
            scores, found = index.search(q, min(k + 1, n))
            rows = np.repeat(np.arange(start, start + len(q)), found.shape[1])
            scores, found = scores.reshape(-1), found.reshape(-1)
            keep = (found >= 0) & (scores >= threshold)
            rows, scores, found = rows[keep], scores[keep], found[keep]
        found = found.astype(np.int64)
        keep = found > rows if n <= PAIRS_EXACT_MAX else found != rows  # never a row with itself
        lo, hi = np.minimum(rows[keep], found[keep]), np.maximum(rows[keep], found[keep])
        out_i.append(lo)
        out_j.append(hi)
        out_s.append(scores[keep].astype(np.float32))
        if on_progress is not None:
            on_progress(min(start + batch, n), n)
    i, j, s = np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_s)
    if n > PAIRS_EXACT_MAX and len(i):  # k-NN may find a pair from both ends: once each
        key = np.unique(i * n + j, return_index=True)[1]
        i, j, s = i[key], j[key], s[key]
    return i, j, s
