"""The light text tower's two engines (encoders/textfast.py in numpy, encoders/textonnx.py in ONNX Runtime):
the same function as open_clip's encode_text for the tower variants the light path accepts (GELU and
QuickGELU, LayerScale, the shipped demo model's reduced vocabulary), one batch of texts of many lengths at a
time, concurrent callers; and how a Reader chooses, reports and falls back."""

from __future__ import annotations

import copy
import sys
import threading

import numpy as np
import pytest

from conftest import TINY_MODEL_CFG, write_checkpoint

from clipsearch.encoders import parse_model_spec  # noqa: E402
from clipsearch.encoders.textfast import load_text_encoder  # noqa: E402

TEXTS = ["a dog", "a red circle above a green square", "", "x " * 40, "café 公園 🐶", "two small blue triangles"]

VARIANTS = {
    "gelu": {},
    "quick-gelu": {"quick_gelu": True},
    "layer-scale": {"text_cfg": {"ls_init_value": 0.7}},
    "quick-gelu-layer-scale": {"quick_gelu": True, "text_cfg": {"ls_init_value": 0.3}},
}


def variant_cfg(name: str) -> dict:
    cfg = copy.deepcopy(TINY_MODEL_CFG)
    extra = copy.deepcopy(VARIANTS[name])
    cfg["text_cfg"].update(extra.pop("text_cfg", {}))
    cfg.update(extra)
    return cfg


def open_clip_vectors(directory, texts) -> np.ndarray:
    """open_clip's own encode_text on the checkpoint's weights (fp32), normalised."""
    import json

    import open_clip
    import torch
    from open_clip.model import CLIP
    from safetensors.torch import load_file

    cfg = json.loads((directory / "open_clip_config.json").read_text())["model_cfg"]
    model = CLIP(**cfg)
    model.load_state_dict(load_file(str(directory / "open_clip_model.safetensors")))
    model.eval()
    tokens = open_clip.tokenize(texts, context_length=cfg["text_cfg"]["context_length"])
    with torch.no_grad():
        return model.encode_text(tokens, normalize=True).numpy()


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request, tmp_path_factory):
    directory = write_checkpoint(tmp_path_factory.mktemp("engines") / request.param, variant_cfg(request.param),
                                 seed=3)
    return directory, open_clip_vectors(directory, TEXTS)


def encoders(model: str):
    numpy_engine = load_text_encoder(parse_model_spec(model))
    onnx_engine = load_text_encoder(parse_model_spec(model))
    assert numpy_engine is not None and onnx_engine is not None
    assert onnx_engine.use_onnxruntime() and onnx_engine.engine == "onnxruntime"
    assert numpy_engine.engine == "numpy"
    return numpy_engine, onnx_engine


def test_both_engines_give_open_clips_vectors_for_each_tower_variant(variant):
    directory, theirs = variant
    numpy_engine, onnx_engine = encoders(str(directory))
    for engine in (numpy_engine, onnx_engine):
        ours = engine.embed_texts(TEXTS)
        assert np.abs(ours - theirs).max() <= 1e-5, (engine.engine, np.abs(ours - theirs).max())
        assert (1 - (ours * theirs).sum(1)).max() <= 5e-7


def test_the_variants_differ_so_each_is_tested(tmp_path):
    """Each variant's open_clip vectors differ from the plain tower's with the same seed: the settings reach
    the function (otherwise the variant tests above would test nothing new)."""
    vectors = {}
    for name in VARIANTS:
        directory = write_checkpoint(tmp_path / name, variant_cfg(name), seed=3)
        vectors[name] = open_clip_vectors(directory, TEXTS)
    for name in VARIANTS:
        if name != "gelu":
            assert np.abs(vectors[name] - vectors["gelu"]).max() > 1e-3, name


def test_the_demo_models_reduced_vocabulary_in_both_engines():
    numpy_engine, onnx_engine = encoders("shapes")
    a, b = numpy_engine.embed_texts(TEXTS), onnx_engine.embed_texts(TEXTS)
    assert np.abs(a - b).max() <= 1e-5
    # one text alone (cut at its own end token) is the same vector as inside the batch
    alone = onnx_engine.embed_texts([TEXTS[1]])[0]
    assert np.abs(alone - b[1]).max() <= 1e-5


def test_concurrent_callers_of_one_session_get_their_own_answers():
    _, onnx_engine = encoders("shapes")
    texts = [f"{t} {i}" for i, t in enumerate(TEXTS * 4)]
    expected = {t: onnx_engine.embed_texts([t])[0] for t in texts}
    got, errors = {}, []
    start = threading.Barrier(4)

    def work(part):
        try:
            start.wait()
            for t in part:
                got[t] = onnx_engine.embed_texts([t])[0]
        except Exception as e:  # noqa: BLE001 - reported below, with the text that failed
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(texts[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert set(got) == set(texts)
    for t in texts:
        assert np.array_equal(got[t], expected[t]), t  # same session, same batch: the same bits


# -- a Reader's choice -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    from test_server_common import quickstart_library

    return quickstart_library(tmp_path_factory)


def test_a_reader_reports_its_engine_and_both_rank_alike(library):
    from clipsearch import Query, Reader

    answers = {}
    for engine in ("numpy", "onnxruntime"):
        with Reader.open(library, text_engine=engine) as reader:
            assert reader.status()["text_engine"] is None  # nothing loaded before the first text query
            res = reader.search(Query.text("a red circle", k=8, cutoff="none"))
            assert reader.status()["text_engine"] == engine
            answers[engine] = [(r.embedding_id, r.score) for r in res]
    assert [i for i, _ in answers["numpy"]] == [i for i, _ in answers["onnxruntime"]]
    assert np.allclose([s for _, s in answers["numpy"]], [s for _, s in answers["onnxruntime"]], atol=1e-5)


def test_without_onnxruntime_a_reader_keeps_numpy(library, monkeypatch):
    from clipsearch import Query, Reader

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    with Reader.open(library, text_engine="onnxruntime") as reader:
        assert len(reader.search(Query.text("a red circle", k=3, cutoff="none"))) == 3
        assert reader.status()["text_engine"] == "numpy"


def test_an_unknown_engine_is_refused(library):
    from clipsearch import Reader

    with pytest.raises(ValueError, match="text_engine must be one of numpy, onnxruntime"):
        Reader.open(library, text_engine="torch")


def test_a_library_passes_its_engine_to_its_reader(library):
    from clipsearch import Library, Query

    with Library.open(library, create=False, text_engine="onnxruntime") as lib:
        assert len(lib.search(Query.text("a red circle", k=3, cutoff="none"))) == 3
        assert lib.status()["text_engine"] == "onnxruntime"
    with pytest.raises(ValueError, match="text_engine must be one of"):
        Library.open(library, create=False, text_engine="bf16")
