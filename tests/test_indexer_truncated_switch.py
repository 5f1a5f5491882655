"""--allow-truncated flips Pillow's process-wide LOAD_TRUNCATED_IMAGES for its retry: no other decode may run
while it is flipped, or a truncated file in another thread is decoded grey and not flagged.

Each test parks one thread inside a decode (in PIL.Image.open, after the decode has taken its side of the lock)
and lets the other run until it has either finished or is waiting for the lock; only then is the first thread
let go. So the interleaving is fixed by the test, not by thread timing."""

from __future__ import annotations

import threading
import time

import pytest
from PIL import Image, ImageFile

from clipsearch import imaging
from clipsearch.errors import ImageError

from conftest import make_image

WAIT = 60  # seconds: only a hang (a bug) waits this long


@pytest.fixture
def truncated(tmp_path) -> bytes:
    jpg = make_image(tmp_path / "src.jpg", 1, size=(200, 160)).read_bytes()
    return jpg[: len(jpg) * 2 // 3]


@pytest.fixture
def park(monkeypatch):
    """park(thread_name, when) -> (inside, go): that thread stops in Image.open, the first time `when()` holds
    there, until `go` is set."""
    real_open = Image.open
    parked: dict[str, tuple[threading.Event, threading.Event, object]] = {}

    def open_(*a, **k):
        entry = parked.get(threading.current_thread().name)
        if entry is not None and not entry[0].is_set() and entry[2]():
            inside, go, _ = entry
            inside.set()
            assert go.wait(WAIT), "never let go"
        return real_open(*a, **k)

    monkeypatch.setattr(Image, "open", open_)

    def arm(name: str, when=lambda: True):
        parked[name] = (threading.Event(), threading.Event(), when)
        return parked[name][:2]

    return arm


def until(condition) -> None:
    """Wait for a state of the other thread (finished, or waiting for the lock); the outcome never depends
    on how long this takes."""
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "the other thread neither finished nor waited"
        time.sleep(0.001)


def run(name: str, fn, out: dict) -> threading.Thread:
    def body():
        try:
            out[name] = fn()
        except BaseException as e:
            out[name] = e

    t = threading.Thread(target=body, name=name)
    t.start()
    return t


def test_a_decode_in_progress_keeps_the_switch_off_until_it_ends(truncated, park):
    """A is inside an ordinary decode of a truncated file; B's allowed retry must wait for it (it would otherwise
    flip the switch, be parked inside the retry, and A would then decode the file grey). A still refuses the file
    as truncated, and B then gets its grey-filled, flagged image."""
    inside_a, go_a = park("A")
    inside_b, go_b = park("B", when=lambda: ImageFile.LOAD_TRUNCATED_IMAGES)  # only inside the retry
    out: dict = {}
    a = run("A", lambda: imaging.decode(truncated), out)
    assert inside_a.wait(WAIT)
    b = run("B", lambda: imaging.decode(truncated, allow_truncated=True), out)
    until(lambda: inside_b.is_set() or imaging._decode_lock.waiting()[1] == 1)
    go_a.set()
    a.join(WAIT)
    go_b.set()
    b.join(WAIT)
    assert isinstance(out["A"], ImageError) and out["A"].reason.startswith("truncated"), out["A"]
    rgb, size = out["B"]
    assert rgb.info.get("truncated") is True and size == (200, 160)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_a_decode_started_during_a_retry_waits_for_the_switch_to_be_restored(truncated, park):
    """B is inside the retry, the switch flipped; A's ordinary decode waits for it, then refuses the file."""
    inside, go = park("B", when=lambda: ImageFile.LOAD_TRUNCATED_IMAGES)  # in the retry, not the first attempt
    out: dict = {}
    b = run("B", lambda: imaging.decode(truncated, allow_truncated=True), out)
    assert inside.wait(WAIT)
    a = run("A", lambda: imaging.decode(truncated), out)
    until(lambda: "A" in out or imaging._decode_lock.waiting()[0] == 1)
    go.set()
    a.join(WAIT)
    b.join(WAIT)
    assert isinstance(out["A"], ImageError) and out["A"].reason.startswith("truncated"), out["A"]
    assert out["B"][0].info.get("truncated") is True
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_ordinary_decodes_share_the_lock(tmp_path, park):
    """Two ordinary decodes run at once (the shared side): B finishes while A is parked inside its decode."""
    good = make_image(tmp_path / "good.png", 2).read_bytes()
    inside, go = park("A")
    out: dict = {}
    a = run("A", lambda: imaging.decode(good), out)
    assert inside.wait(WAIT)
    b = run("B", lambda: imaging.decode(good), out)
    b.join(WAIT)
    assert "B" in out and not isinstance(out["B"], BaseException) and "A" not in out
    go.set()
    a.join(WAIT)
    assert out["A"][1] == out["B"][1] == (48, 40)


def test_a_waiting_retry_goes_before_new_decodes(truncated, tmp_path, park):
    """A parked in an ordinary decode, B's retry waiting for it: a new ordinary decode C waits behind B (else a
    stream of decodes could hold the retry off for ever)."""
    good = make_image(tmp_path / "good.png", 3).read_bytes()
    inside, go = park("A")
    out: dict = {}
    a = run("A", lambda: imaging.decode(good), out)
    assert inside.wait(WAIT)
    b = run("B", lambda: imaging.decode(truncated, allow_truncated=True), out)
    until(lambda: imaging._decode_lock.waiting()[1] == 1)
    c = run("C", lambda: imaging.decode(good), out)
    until(lambda: "C" in out or imaging._decode_lock.waiting()[0] == 1)
    assert "C" not in out
    go.set()
    for t in (a, b, c):
        t.join(WAIT)
    assert out["B"][0].info.get("truncated") is True and out["C"][1] == (48, 40)
