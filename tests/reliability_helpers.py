"""Helpers shared by the reliability tests (crash harness, fault injection, hostile input, stress)."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import numpy as np


class FakeEncoder:
    """A deterministic stand-in for the model: a unit vector from the image's pixels; counts its calls."""

    def __init__(self, dim: int = 16, name: str = "fake-encoder"):
        self.name = name
        self.dim = dim
        self.image_size = 16
        self.fingerprint = {"model": name, "arch": "fake", "weights": "none", "dim": dim, "normalized": True}
        self.calls = 0
        self.images = 0
        self.poison: set[int] = set()  # image indexes (in call order) to embed as NaN

    def preprocess(self, image):
        return np.asarray(image.convert("RGB").resize((4, 4)), dtype=np.float32).ravel()

    def embed_batch(self, tensors) -> np.ndarray:
        self.calls += 1
        out = np.empty((len(tensors), self.dim), np.float32)
        for i, t in enumerate(tensors):
            seed = int.from_bytes(hashlib.blake2b(np.asarray(t).tobytes(), digest_size=8).digest(), "little")
            v = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
            out[i] = v / np.linalg.norm(v)
            if self.images in self.poison:
                out[i] = np.nan
            self.images += 1
        return out

    def embed_images(self, images) -> np.ndarray:
        return self.embed_batch([self.preprocess(im) for im in images])

    def embed_texts(self, texts) -> np.ndarray:
        out = np.empty((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            seed = int.from_bytes(hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
            v = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
            out[i] = v / np.linalg.norm(v)
        return out


def db_rows(lib_dir: Path, sql: str, args=()) -> list[tuple]:
    con = sqlite3.connect(Path(lib_dir) / "library.db")
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def ok_paths(lib_dir: Path) -> set[bytes]:
    return {r[0] for r in db_rows(lib_dir, "SELECT path FROM files WHERE status='ok'")}


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))
