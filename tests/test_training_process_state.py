"""The training library leaves process-wide state alone (torch's thread count, torch's global random
generator, the root logger), and its results depend on the seed, not on that state."""

from __future__ import annotations

import logging

import pytest
import torch

from clipsearch.training import shapes
from clipsearch.training.inspect import describe
from clipsearch.training.options import TrainOptions
from clipsearch.training.train import train_folder
from conftest import write_checkpoint

TINY_RESNET = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("captioned")
    shapes.write_dataset(d, 12, seed=5)
    return d


@pytest.fixture
def watched(monkeypatch):
    """Record every torch.set_num_threads and root-logger setLevel call (still carried out), and give
    the test a global generator state of its own that is put back afterwards."""
    calls = []
    real_threads = torch.set_num_threads
    root = logging.getLogger()
    real_level = root.setLevel

    def set_num_threads(n):
        calls.append(("set_num_threads", n))
        real_threads(n)

    def set_level(level):
        calls.append(("setLevel", level))
        real_level(level)

    monkeypatch.setattr(torch, "set_num_threads", set_num_threads)
    monkeypatch.setattr(root, "setLevel", set_level)
    threads, level, filters = torch.get_num_threads(), root.level, list(root.filters)
    with torch.random.fork_rng(devices=[]):
        yield calls
    real_threads(threads)
    real_level(level)
    root.filters[:] = filters


def _process_state():
    root = logging.getLogger()
    return torch.get_num_threads(), root.level, list(root.filters), torch.random.get_rng_state()


def test_train_folder_leaves_threads_rng_and_root_logger_alone(watched, data, tmp_path):
    # a new model, a new projection (its ResNet attention-pool Linear) and a held-out split
    opts = TrainOptions(epochs=1, batch_size=6, lr=1e-3, warmup_steps=1, seed=3, val_fraction=0.2, new_projection=8)
    results = []
    for name, global_seed in (("a", 11), ("b", 12345)):  # a different global generator state before each run
        torch.manual_seed(global_seed)
        before = _process_state()
        s = train_folder(data, tmp_path / name, arch=TINY_RESNET, opts=opts)
        after = _process_state()
        assert after[0] == before[0], "torch.get_num_threads() changed"
        assert after[1] == before[1] and after[2] == before[2], "the root logger's level or filters changed"
        assert torch.equal(after[3], before[3]), "torch's global generator state changed"
        results.append((s["losses"], (tmp_path / name / "open_clip_model.safetensors").read_bytes()))
    assert watched == []
    # the seed alone decides the weights, whatever the global generator held
    assert results[0] == results[1]


def test_describe_leaves_the_root_logger_alone(watched, tmp_path):
    ckpt = write_checkpoint(tmp_path / "m")
    before = _process_state()
    d = describe(str(ckpt))
    assert d["embed_dim"] == 32
    after = _process_state()
    assert after[1] == before[1] and after[2] == before[2]
    assert watched == []
