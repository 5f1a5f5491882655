"""Speed work that must not change behaviour: precision and device choice, bf16 accuracy, the light text
path, the meta-device model build, the flat search kernel, bounded read-ahead, a torch-free query."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_MODEL_CFG, make_image, require_shapes_sample, write_checkpoint

REPO = Path(__file__).resolve().parent.parent
SHAPES = REPO / "clipsearch" / "models" / "shapes" / "open_clip_config.json"
sys.path.insert(0, str(REPO / "benchmarks"))  # bf16_agreement: the README's bf16 figures and this test's check


# -- precision and device choice ----------------------------------------------------------------------------
@pytest.mark.parametrize("flags,expected", [
    ("fpu sse avx2 avx512f avx512_bf16", "bf16"),  # AMD Zen 4/5: measured x1.9 in bf16
    ("fpu avx512f avx512_bf16 amx_bf16 amx_tile", "bf16"),  # Intel Sapphire Rapids (AMX)
    ("fpu sse avx2 avx512f", "fp32"),  # no native bf16: emulated, slower than fp32
    ("fpu sse avx2", "fp32"),
])
def test_auto_precision_follows_cpu_features(monkeypatch, tmp_path, flags, expected):
    from clipsearch.encoders import openclip

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    real = openclip.Path
    monkeypatch.setattr(openclip, "Path", lambda p: real(cpuinfo) if p == "/proc/cpuinfo" else real(p))
    assert openclip.resolve_precision("auto", "cpu") == expected
    assert openclip.resolve_precision("auto", "cuda") == "fp16"
    assert openclip.resolve_precision("fp32", "cpu") == "fp32"  # forcing either way is honoured
    assert openclip.resolve_precision("bf16", "cpu") == "bf16"


def test_device_choice(monkeypatch):
    import torch

    from clipsearch.encoders.openclip import resolve_device
    from clipsearch.errors import ModelUnavailableError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    assert resolve_device("cuda") == "cuda"
    assert resolve_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    with pytest.raises(ModelUnavailableError):
        resolve_device("cuda")


# -- bf16 against fp32 ----------------------------------------------------------------------------------------
def _pictures(n=12):
    from PIL import Image

    rng = np.random.default_rng(3)
    out = []
    for _ in range(n):
        small = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
        out.append(Image.fromarray(small, "RGB").resize((64, 48), Image.BILINEAR))
    return out


def test_bf16_embeddings_match_fp32(tiny_model):
    from clipsearch.encoders import load_encoder

    fp32 = load_encoder(tiny_model, device="cpu", precision="fp32")
    bf16 = load_encoder(tiny_model, device="cpu", precision="bf16")
    assert bf16.precision == "bf16" and fp32.precision == "fp32"
    images = _pictures()
    cos_img = np.sum(fp32.embed_images(images) * bf16.embed_images(images), axis=1)
    texts = ["a red circle", "a large blue square in the top left", "a dog", "two green triangles and a star"]
    cos_txt = np.sum(fp32.embed_texts(texts) * bf16.embed_texts(texts), axis=1)
    assert cos_img.min() >= 0.999, cos_img
    assert cos_txt.min() >= 0.999, cos_txt


@pytest.mark.parametrize("quick_gelu", [False, True])
def test_bf16_blocks_pack_the_mlp(quick_gelu):
    """Where oneDNN's prepacked linear works, the MLP's matmuls run on packed weights, the exact GELU fused into
    the first (QuickGELU stays a module); the answers stay those of fp32 and the parameters stay in place."""
    import copy

    import torch
    from open_clip.model import CLIP
    from open_clip.transformer import ResidualAttentionBlock

    from clipsearch.encoders.openclip import _bf16_blocks, _onednn_packing_works, cpu_supports_bf16

    torch.manual_seed(0)
    model = CLIP(**TINY_MODEL_CFG, quick_gelu=quick_gelu).eval()
    mixed = copy.deepcopy(model)
    keys = set(model.state_dict())
    assert _bf16_blocks(mixed)
    assert set(mixed.state_dict()) == keys
    mlps = [m.mlp for m in mixed.modules() if isinstance(m, ResidualAttentionBlock)]
    packing = _onednn_packing_works()
    if cpu_supports_bf16():  # this machine: AVX512_BF16, and torch's wheels carry oneDNN
        assert packing
    assert all("forward" in vars(m.c_fc) for m in mlps) == packing
    assert all(isinstance(m.gelu, torch.nn.Identity) for m in mlps) == (packing and not quick_gelu)
    with torch.device("meta"):  # weights off the CPU (as on CUDA with --precision bf16): nothing is packed
        elsewhere = CLIP(**TINY_MODEL_CFG, quick_gelu=quick_gelu)
    assert _bf16_blocks(elsewhere)
    assert not any("forward" in vars(m.mlp.c_fc) for m in elsewhere.modules() if isinstance(m, ResidualAttentionBlock))
    x = torch.randn(6, 3, 32, 32)
    tokens = torch.randint(1, 400, (3, 16))
    with torch.inference_mode():
        for a, b in ((model.encode_image(x), mixed.encode_image(x)), (model.encode_text(tokens), mixed.encode_text(tokens))):
            assert torch.nn.functional.cosine_similarity(a, b.float()).min() >= 0.999


def test_bf16_keeps_shapes_demo_rankings():
    """The evaluation's searches (partial descriptions, full captions, example images) in bf16 against fp32
    (benchmarks/bf16_agreement.py, which prints the counts the README quotes): embeddings within cosine 0.999,
    and every top 10 the same list, except that results whose fp32 scores tie to within bf16's own noise
    (NEAR_TIE) may trade places."""
    from bf16_agreement import agreement, shapes_outcomes

    assert SHAPES.exists(), "the shipped shapes demo model is missing"
    a = agreement(shapes_outcomes("shapes", require_shapes_sample()))
    assert a["min_cosine_images"] >= 0.999 and a["min_cosine_texts"] >= 0.999, a
    changed = a["changed_beyond_near_ties"]
    assert not changed, f"{len(changed)} top-10 rankings changed beyond near-ties in bf16: {changed[:5]}"
    assert a["identical_top10"] + a["near_tie_swaps"] == a["outcomes"] > 800


# -- the light text path -----------------------------------------------------------------------------------
TEXTS = ["a red circle", "A LARGE blue square   in the top left!", "", "Ünïcödé &amp; café 123 — naïve",
         "x" * 200, "it's the dogs' 2nd ball, isn't it?", "a small pink circle at the top and a star"]


def test_numpy_text_tower_is_the_model(tiny_model):
    from clipsearch.encoders import load_encoder, parse_model_spec
    from clipsearch.encoders.textfast import load_text_encoder

    light = load_text_encoder(parse_model_spec(tiny_model))
    assert light is not None
    full = load_encoder(tiny_model, device="cpu", precision="fp32")
    assert np.array_equal(light.tokenize(TEXTS), full.loaded.tokenize(TEXTS).numpy())
    cos = np.sum(light.embed_texts(TEXTS) * full.embed_texts(TEXTS), axis=1)
    assert cos.min() >= 0.99999, cos
    assert light.weights_id == full.fingerprint["weights"] and light.dim == full.dim


def test_numpy_erf_is_accurate():
    import math

    from clipsearch.encoders.textfast import _erf, _gelu

    xs = np.linspace(-9, 9, 36_001)
    assert np.abs(_erf(xs) - np.array([math.erf(v) for v in xs])).max() < 1e-7
    x32 = np.linspace(-6, 6, 1001, dtype=np.float32)
    exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x32.astype(np.float64)])
    assert np.abs(_gelu(x32) - exact).max() < 1e-6


def test_numpy_text_tower_reduced_vocab_quickgelu_layerscale(tmp_path):
    """The shapes model's layout: a reduced vocabulary (token remap), here with QuickGELU and LayerScale too."""
    from clipsearch.encoders import load_encoder, parse_model_spec
    from clipsearch.encoders.textfast import load_text_encoder
    from clipsearch.training.vocab import normalize_token_ids, token_ids_for_texts

    keep = normalize_token_ids(token_ids_for_texts(["a red circle", "a large blue square in the top left"]))
    cfg = json.loads(json.dumps(TINY_MODEL_CFG))
    cfg["quick_gelu"] = True
    cfg["text_cfg"].update(vocab_size=len(keep) + 2, ls_init_value=0.5)
    d = write_checkpoint(tmp_path / "reduced", cfg, seed=5)
    conf = json.loads((d / "open_clip_config.json").read_text())
    conf["clipsearch"]["token_ids"] = keep
    (d / "open_clip_config.json").write_text(json.dumps(conf))
    light = load_text_encoder(parse_model_spec(str(d)))
    full = load_encoder(str(d), device="cpu", precision="fp32")
    texts = ["a red circle", "a large blue square in the top left", "an unknown word zebra"]
    assert np.array_equal(light.tokenize(texts), full.loaded.tokenize(texts).numpy())
    assert np.sum(light.embed_texts(texts) * full.embed_texts(texts), axis=1).min() >= 0.99999


def test_light_path_declines_what_it_does_not_cover(tmp_path):
    from clipsearch.encoders import parse_model_spec
    from clipsearch.encoders.textfast import load_text_encoder

    cfg = json.loads(json.dumps(TINY_MODEL_CFG))
    cfg["text_cfg"]["no_causal_mask"] = True  # trimming would not be exact; leave it to open_clip
    d = write_checkpoint(tmp_path / "bidir", cfg)
    assert load_text_encoder(parse_model_spec(str(d))) is None


def test_search_results_agree_between_light_path_and_full_model(library_with_images):
    from clipsearch.library import Library

    path, model = library_with_images
    with Library.open(path, create=False) as lib:
        light = lib.search("a red circle", k=5)
        assert type(lib.text_encoder()).__name__ == "NumpyTextEncoder"
    with Library.open(path, create=False, precision="fp32") as lib:
        lib._text_encoder = False  # force the full model
        full = lib.search("a red circle", k=5)
    assert [r.path for r in light] == [r.path for r in full]
    assert np.allclose([r.score for r in light], [r.score for r in full], atol=1e-5)


def test_cli_text_query_does_not_import_torch(library_with_images):
    path, _ = library_with_images
    code = ("import sys\nfrom clipsearch.cli import cli\n"
            "try:\n    cli(['query', 'a red circle', '--library', sys.argv[1], '-k', '3'], prog_name='clipsearch')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', 'OPEN_CLIP' if 'open_clip' in sys.modules else '')\n")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 4 and lines[-1].strip() == "NO-TORCH", out.stdout


def test_light_path_refuses_other_weights(library_with_images, tmp_path):
    """The light path checks the library's recorded weights too (a checkpoint rewritten in place)."""
    from clipsearch.errors import ModelMismatchError
    from clipsearch.library import Library

    path, model = library_with_images
    write_checkpoint(Path(model), seed=9)  # same directory, other weights
    with Library.open(path, create=False) as lib:
        with pytest.raises(ModelMismatchError):
            lib.search("a red circle", k=3)


@pytest.fixture
def library_with_images(tmp_path):
    from clipsearch.library import Library

    model = str(write_checkpoint(tmp_path / "model", seed=2))
    for i in range(12):
        make_image(tmp_path / "photos" / f"p{i}.jpg", seed=100 + i)
    lib_path = tmp_path / "lib"
    with Library.open(lib_path, model=model, create=True, precision="fp32") as lib:
        lib.index([tmp_path / "photos"])
    return lib_path, model


# -- model loading -------------------------------------------------------------------------------------------
def test_meta_device_build_loads_exactly(tiny_model):
    import torch
    from open_clip.model import CLIP
    from safetensors.torch import load_file

    from clipsearch.encoders import parse_model_spec
    from clipsearch.encoders.openclip import load_clip

    loaded = load_clip(parse_model_spec(tiny_model))
    ref = CLIP(**TINY_MODEL_CFG)
    ref.load_state_dict(load_file(str(Path(tiny_model) / "open_clip_model.safetensors")))
    ref.eval()
    ref.requires_grad_(False)  # as load_clip leaves it (that picks the same attention kernel)
    m = loaded.model
    assert not any(t.is_meta for t in list(m.parameters()) + list(m.buffers()))
    assert torch.equal(m.attn_mask, ref.attn_mask)
    for k, v in ref.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k
    x = torch.randn(2, 3, 32, 32)
    tok = loaded.tokenize(["a red circle", "a dog"])
    with torch.inference_mode():
        assert torch.equal(m.encode_image(x), ref.encode_image(x))
        assert torch.equal(m.encode_text(tok), ref.encode_text(tok))


def test_weight_hash_is_remembered(tmp_path, monkeypatch):
    from clipsearch.encoders import _common

    monkeypatch.setattr(_common, "hash_cache_path", lambda: tmp_path / "cache" / "h.json")
    f = tmp_path / "w.bin"
    f.write_bytes(b"abc" * 1000)
    first = _common.sha256_file(f)
    assert json.loads((tmp_path / "cache" / "h.json").read_text())
    calls = []
    real = _common.hashlib.sha256
    monkeypatch.setattr(_common.hashlib, "sha256", lambda *a: calls.append(1) or real(*a))
    assert _common.sha256_file(f) == first and not calls  # from the cache
    f.write_bytes(b"abd" * 1000)  # changed content: hashed again
    assert _common.sha256_file(f) != first and calls


# -- search kernel -------------------------------------------------------------------------------------------
def test_flat_search_kernel_matches_faiss():
    from clipsearch.vector_index import VectorIndex

    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = VectorIndex(16)
    index.add(np.arange(500) * 3 + 1, x)
    index.remove(np.array([4, 7, 301]))
    index.add(np.array([10_000]), x[:1])
    for qi in (0, 5, 99):
        scores, ids = index.search(x[qi], 20)
        fs, fi = index.index.search(x[qi][None], 20)
        assert np.array_equal(ids, fi[0]) and np.allclose(scores, fs[0], atol=1e-6)
        assert ids.dtype == np.int64
    scores, ids = index.search(x[3], 10_000)  # k beyond ntotal: everything, best first
    assert len(ids) == index.ntotal and np.all(np.diff(scores) <= 1e-7)


@pytest.mark.parametrize("size,interpolation", [(224, "bicubic"), (96, "bicubic"), (64, "bilinear")])
def test_pil_preprocess_is_open_clips_transform(size, interpolation):
    """The indexer's torch-free preprocessing gives open_clip's evaluation transform bit for bit."""
    import open_clip
    from PIL import Image

    from clipsearch.encoders.openclip import pil_preprocess

    pp = {"size": size, "interpolation": interpolation, "resize_mode": "shortest",
          "mean": (0.48145466, 0.4578275, 0.40821073), "std": (0.26862954, 0.26130258, 0.27577711)}
    ours = pil_preprocess(pp)
    theirs = open_clip.transform.image_transform_v2(open_clip.transform.PreprocessCfg(**pp), is_train=False)
    rng = np.random.default_rng(3)
    for w, h in ((576, 432), (432, 577), (size, size), (size + 1, 3 * size + 7), (1001, 999), (37, 51)):
        for mode in ("RGB", "L", "RGBA"):
            im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
            a, b = ours(im), theirs(im)
            assert a.shape == b.shape == (3, size, size) and a.dtype == b.dtype
            assert torch_equal(a, b), (w, h, mode, float((a - b).abs().max()))
    assert pil_preprocess({**pp, "resize_mode": "squash"}) is None


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_query_threads_follow_idle_cores(monkeypatch):
    from clipsearch import _blas

    monkeypatch.setattr(_blas, "_cores", lambda: 2)
    for others, want in ((0.0, 2), (0.3, 2), (0.8, 1), (1.9, 1), (5.0, 1)):
        monkeypatch.setattr(_blas, "_others_load", lambda cores, o=others: o)
        assert _blas.query_thread_count() == want
    monkeypatch.setattr(_blas, "_cores", lambda: 1)
    assert _blas.query_thread_count() == 1
    # the context manager sets this thread's count and restores the previous one, also after an error
    calls = []
    monkeypatch.setattr(_blas, "_local_setter", lambda: lambda n: calls.append(n) or 4)
    monkeypatch.setattr(_blas, "_cores", lambda: 2)
    monkeypatch.setattr(_blas, "_others_load", lambda cores: 0.0)
    with pytest.raises(KeyError):
        with _blas.query_threads():
            assert calls == [2]
            raise KeyError("inside")
    assert calls == [2, 4]


def test_others_load_from_proc_stat_and_load_average(monkeypatch):
    """The estimate of other processes' CPU use, with /proc/stat, this process's CPU time, the clock and the
    load average all injected: load average on a first call, the /proc/stat difference on the next."""
    import io
    import types

    from clipsearch import _blas

    clock = {"now": 100.0, "busy": 10_000, "own": 5.0}

    def fake_open(path, mode="r"):
        assert path == "/proc/stat"
        idle, iowait = 777, 3  # not busy, whatever they are
        user = clock["busy"]  # busy ticks: all in "user"
        return io.BytesIO(f"cpu  {user} 0 0 {idle} {iowait} 0 0 0 0 0\ncpu0 1 2 3\n".encode())

    fake_os = types.SimpleNamespace(times=lambda: (clock["own"], 0.0, 0.0, 0.0, 0.0),
                                    sysconf=lambda name: 100, getloadavg=lambda: (2.5, 2.0, 1.0))
    monkeypatch.setattr(_blas, "open", fake_open, raising=False)
    monkeypatch.setattr(_blas, "os", fake_os)
    monkeypatch.setattr(_blas, "time", types.SimpleNamespace(monotonic=lambda: clock["now"]))
    monkeypatch.setattr(_blas, "_last_sample", None)
    monkeypatch.setattr(_blas, "_last_estimate", None)
    assert _blas._others_load(2) == pytest.approx(1.5)  # no earlier sample: load average less this query
    # 2 s later: 4.6 s of busy CPU system-wide, 1.0 s of it this process's own: others used 1.8 cores
    clock.update(now=102.0, busy=10_460, own=6.0)
    assert _blas._others_load(2) == pytest.approx(1.8)
    clock.update(now=102.01, busy=99_999)  # within 50 ms: the same query's second product keeps the answer
    assert _blas._others_load(2) == pytest.approx(1.8)
    # this process alone was busy (its own time counts more than the system's ticks show): 0, not negative
    clock.update(now=104.0, busy=10_470, own=8.0)
    assert _blas._others_load(2) == 0.0
    clock.update(now=120.0, busy=10_500, own=8.5)  # more than 10 s since the last sample: load average again
    assert _blas._others_load(2) == pytest.approx(1.5)


def test_float16_shortlist_search_is_exact(monkeypatch):
    """From SHORTLIST_MIN vectors a search scans a float16 copy and rescores a shortlist in float32; the
    answer must be the float32 top k exactly, also among near-ties closer than float16 can tell apart."""
    import clipsearch.vector_index as vi

    monkeypatch.setattr(vi, "SHORTLIST_MIN", 1000)
    rng = np.random.default_rng(1)
    base = rng.standard_normal((5000, 32)).astype(np.float32)
    x = np.concatenate([base, base[:200] + rng.standard_normal((200, 32)).astype(np.float32) * 1e-4])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = vi.VectorIndex(32)
    index.add(np.arange(len(x)) + 7, x)
    used = []
    real = vi.VectorIndex._shortlist
    monkeypatch.setattr(vi.VectorIndex, "_shortlist", lambda self, *a: used.append(real(self, *a)) or used[-1])
    for qi in list(range(0, 200, 9)) + [4000]:
        q = x[qi] + rng.standard_normal(32).astype(np.float32) * 0.01
        q /= np.linalg.norm(q)
        for k in (1, 10, 50):
            scores, ids = index.search(q, k)
            exact = x @ q
            want = np.argsort(-exact, kind="stable")[:k]
            assert np.allclose(scores, exact[want], atol=1e-6)
            assert set(ids.tolist()) == set((want + 7).tolist()) or np.allclose(np.sort(exact[ids - 7]), np.sort(exact[want]), atol=1e-7)
    assert any(r is not None for r in used)  # the shortlist answered (not only the full scan)
    index.remove(np.array([7]))  # a change drops the float16 copy
    assert index._coarse is None and index.search(x[0], 1)[1][0] != 7


def test_cache_file_streams_into_faiss_after_its_checksum(tmp_path, monkeypatch):
    """The cache is hashed, then streamed into FAISS in chunks (faiss.deserialize_index on the whole body
    took 11.6 s at 1M vectors); a body longer than FAISS reads, shorter, or with one byte changed is refused."""
    import clipsearch.vector_index as vi
    from clipsearch.errors import IntegrityError

    monkeypatch.setattr(vi, "_CHUNK", 4096)  # the 192 kB body in many reads
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3000, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = vi.VectorIndex(16, watermark=5)
    index.add(np.arange(3000) * 3, x)
    path = tmp_path / "index.faiss"
    index.save(path, vi.CacheHeader(library_uuid="u", model_fingerprint="m", dim=16, watermark_seq=0, ntotal=0))
    loaded, header = vi.VectorIndex.load(path)
    assert (header.ntotal, header.watermark_seq, loaded.watermark) == (3000, 5, 5)
    assert np.array_equal(loaded.ids(), index.ids()) and np.array_equal(loaded.vectors(), x)

    data = path.read_bytes()
    head_end = 12 + int.from_bytes(data[8:12], "little")
    meta = json.loads(data[12:head_end])

    def write(body: bytes, *, fix_checksum: bool) -> None:
        import hashlib

        m = dict(meta, sha256=hashlib.sha256(body).hexdigest() if fix_checksum else meta["sha256"])
        head = json.dumps(m, sort_keys=True).encode()
        path.write_bytes(data[:8] + len(head).to_bytes(4, "little") + head + body)

    body = data[head_end:]
    flipped = body[:-100] + bytes([body[-100] ^ 1]) + body[-99:]
    for bad, fix, error, message in ((body[:-4], False, IntegrityError, "checksum mismatch"),
                                     (flipped, False, IntegrityError, "checksum mismatch"),
                                     (body + b"extra", True, IntegrityError, "does not match its contents"),
                                     (body[:-4], True, RuntimeError, "read error")):  # FAISS's own refusal
        write(bad, fix_checksum=fix)
        with pytest.raises(error, match=message):
            vi.VectorIndex.load(path)


# -- bounded memory -------------------------------------------------------------------------------------------
def test_indexer_read_ahead_is_bounded(tmp_path, tiny_model):
    """However many images there are, only a bounded number of decoded tensors are alive at once."""
    from clipsearch.encoders import load_encoder
    from clipsearch.library import Library

    inner = load_encoder(tiny_model, device="cpu", precision="fp32")
    alive = {"now": 0, "max": 0}
    lock = threading.Lock()

    class Tracked:
        def __init__(self, t):
            self.t = t
            with lock:
                alive["now"] += 1
                alive["max"] = max(alive["max"], alive["now"])

        def __del__(self):
            with lock:
                alive["now"] -= 1

    class Counting:
        name, dim, image_size = inner.name, inner.dim, inner.image_size
        fingerprint = inner.fingerprint

        def preprocess(self, image):
            return Tracked(inner.preprocess(image))

        def embed_batch(self, tensors):
            return inner.embed_batch([t.t for t in tensors])

        def embed_texts(self, texts):
            return inner.embed_texts(texts)

    for i in range(120):
        make_image(tmp_path / "photos" / f"p{i:03d}.png", seed=i)
    with Library.open(tmp_path / "lib", model=tiny_model, encoder=Counting(), batch_size=4, workers=2) as lib:
        report = lib.index([tmp_path / "photos"])
    assert report.embedded == 120
    assert alive["max"] <= 4 * 3 + 2 + 2, alive  # read-ahead (2 batches + workers) + the batch being embedded


def test_light_path_for_a_pretrained_tag(tiny_model, tmp_path, monkeypatch):
    """ARCH:TAG models: a full load gives the weights file it resolved and the text tower's config (which the
    library records); the light text path reads that record, and on its own (no record) declines the tag."""
    from clipsearch.encoders import _common, load_encoder, parse_model_spec
    from clipsearch.encoders.textfast import load_text_encoder, load_text_encoder_from_record

    monkeypatch.setattr(_common, "hash_cache_path", lambda: tmp_path / "cache" / "h.json")
    spec = parse_model_spec("RN50:some-tag")
    assert spec.kind == "pretrained" and load_text_encoder(spec) is None  # no per-user record any more
    full = load_encoder(tiny_model, device="cpu", precision="fp32")
    record = full.weights_source
    assert record["text"]["model_cfg"]["quick_gelu"] is False and record["sha256"] in full.fingerprint["weights"]
    light = load_text_encoder_from_record(spec.name, {**record, "text": {**record["text"], "arch": "RN50"}})
    assert light is not None and light.weights_id == full.fingerprint["weights"] and light.arch == "RN50"
    assert np.sum(light.embed_texts(TEXTS) * full.embed_texts(TEXTS), axis=1).min() >= 0.99999
