"""The crash harness: `clipsearch index` children are SIGKILLed at random moments and at named points.

After every kill: `check` passes (database integrity, one finite unit vector per live file, the cache
equals the database after catch-up), every batch the child acknowledged (logged after COMMIT returned,
through clipsearch/_crashpoints.py) is present, no content that was committed is ever embedded again,
and what the killed child had embedded but not committed (at most one batch) is all the rerun redoes.

Children are forked from a server that has imported torch/open_clip once (tests/crash_zygote.py) so a
kill costs a fraction of a second; a few kills use real `python -m clipsearch index` processes.
One library is reused across kills; between runs the photo folder grows, loses and renames files.
The default run makes >= 50 kills; `-m slow` runs the long version. Figures are printed (-s).
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from clipsearch import Library

from conftest import make_image
from reliability_helpers import db_rows

NAMED = ["before_embed", "mid_commit", "after_commit", "mid_sweep", "after_sweep", "mid_checkpoint",
         "before_replace", "after_replace"]
HERE = Path(__file__).resolve().parent


def read_log(path: Path) -> list[dict]:
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


class Zygote:
    def __init__(self):
        env = dict(os.environ)
        env.pop("CLIPSEARCH_HOME", None)
        env.pop("CLIPSEARCH_CRASH_AT", None)
        env.pop("CLIPSEARCH_CRASH_LOG", None)
        self.proc = subprocess.Popen([sys.executable, str(HERE / "crash_zygote.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=str(HERE.parent))

    def run(self, argv, env, out: Path, err: Path, kill_after: float | None = None, timeout: float = 300) -> int:
        self.proc.stdin.write(json.dumps({"argv": argv, "env": env, "stdout": str(out), "stderr": str(err)}) + "\n")
        self.proc.stdin.flush()
        pid = json.loads(self.proc.stdout.readline())["pid"]
        if kill_after is not None:
            ready, _, _ = select.select([self.proc.stdout], [], [], kill_after)
            if not ready:  # still running, or just finished and reaped before its exit line reached us
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass  # it ended on its own: its exit line follows
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"child {pid} hung"
        return json.loads(self.proc.stdout.readline())["exit"]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@dataclass
class Figures:
    kills: int = 0
    random_kills: int = 0
    named_kills: dict = field(default_factory=dict)
    real_process_kills: int = 0
    runs: int = 0
    batches_verified: int = 0
    lost_batches: int = 0  # embedded by a killed child but not committed
    reembedded_batches: int = 0  # of those, redone by the rerun
    reembedded_committed: int = 0  # content embedded again although committed (must stay 0)
    max_redone_per_kill: int = 0
    checks: int = 0


class Harness:
    def __init__(self, tmp: Path, model: str, seed: int):
        self.tmp = tmp
        self.model = model
        self.rng = random.Random(seed)
        self.photos = tmp / "photos"
        self.lib = tmp / "lib"
        self.next_seed = 0
        self.zygote = Zygote()
        self.fig = Figures()
        self.durations: list[float] = []
        self.pending_lost: set[str] = set()  # hashes a killed child embedded without committing
        self.n_run = 0

    # -- the photo folder changes between runs -------------------------------------------------------
    def add(self, n: int):
        for _ in range(n):
            s = self.next_seed
            self.next_seed += 1
            make_image(self.photos / f"d{s % 7}" / f"img{s:05d}.png", 50_000 + s, size=(32, 32))

    def mutate(self):
        files = sorted(self.photos.rglob("*.png"))
        self.add(self.rng.randint(6, 20))
        for p in self.rng.sample(files, min(len(files), self.rng.randint(0, 3))):
            p.unlink()
        files = [p for p in files if p.exists()]
        if files:
            p = self.rng.choice(files)
            p.rename(p.with_name("r" + p.name))

    # -- one child ------------------------------------------------------------------------------------
    def run(self, *, crash_at: str | None = None, kill_after: float | None = None, real: bool = False):
        self.n_run += 1
        log = self.tmp / f"log{self.n_run}.jsonl"
        out, err = self.tmp / "out.txt", self.tmp / "err.txt"
        env = {"CLIPSEARCH_CRASH_LOG": str(log)}
        if crash_at:
            env["CLIPSEARCH_CRASH_AT"] = crash_at
        argv = ["index", str(self.photos), "--library", str(self.lib), "--model", self.model,
                "--batch-size", "4", "--workers", "1", "-q", "--json"]
        committed_before = {r[0] for r in db_rows(self.lib, "SELECT content_hash FROM embeddings")} \
            if (self.lib / "library.db").exists() else set()
        t0 = time.monotonic()
        if real:
            full = dict(os.environ, **env)
            full.pop("CLIPSEARCH_HOME", None)
            child = subprocess.Popen([sys.executable, "-m", "clipsearch", *argv], env=full,
                                     stdout=open(out, "w"), stderr=open(err, "w"))
            try:
                code = child.wait(timeout=kill_after) if kill_after is not None else child.wait(timeout=300)
            except subprocess.TimeoutExpired:
                child.kill()
                code = child.wait()
        else:
            code = self.zygote.run(argv, env, out, err, kill_after=kill_after)
        elapsed = time.monotonic() - t0
        self.fig.runs += 1
        events = read_log(log)
        killed = code == -signal.SIGKILL
        assert killed or code == 0, f"exit {code}: {err.read_text()[-3000:]}"
        if code == 0 and not crash_at:
            self.durations.append(elapsed)
            report = json.loads(out.read_text())
        else:
            report = None
        self.verify(events, committed_before, killed, report)
        return killed

    def verify(self, events: list[dict], committed_before: set[str], killed: bool, report):
        # no content committed before this run was embedded again
        embedded_now = [h for e in events if e["event"] == "before_embed" for h in e["hashes"]]
        again = committed_before.intersection(embedded_now)
        self.fig.reembedded_committed += len(again)
        assert not again, f"{len(again)} committed images embedded again"
        # what the previous killed child lost, redone now (at most one batch)
        redone = self.pending_lost.intersection(embedded_now)
        if redone:
            self.fig.reembedded_batches += 1
        self.pending_lost = set()
        # every acknowledged batch is present
        stored = dict(db_rows(self.lib, "SELECT path, content_hash FROM files WHERE status='ok'"))
        acked_embedded = set()
        for e in events:
            if e["event"] == "after_commit":
                self.fig.batches_verified += 1
                acked_embedded.update(e["embedded"])
                for p, h in e["ok"].items():
                    assert stored.get(os.fsencode(p)) == h, f"acknowledged {p} missing after the kill"
        if killed:
            lost_batches = [e for e in events if e["event"] == "before_embed"
                            and e["hashes"] and not set(e["hashes"]) <= acked_embedded]
            assert len(lost_batches) <= 1, "more than one uncommitted batch was embedded"
            self.fig.lost_batches += len(lost_batches)
            self.pending_lost = {h for e in lost_batches for h in e["hashes"]} - acked_embedded
            self.fig.max_redone_per_kill = max(self.fig.max_redone_per_kill, len(lost_batches))
        if report is not None:
            assert report["embedded"] == len(set(embedded_now))
        # check passes, from the parent, on the library as the kill left it
        with Library.open(self.lib, create=False) as lib:
            r = lib.check()
        self.fig.checks += 1
        assert r.ok, r.problems

    def kill_random(self, real: bool = False):
        typical = sorted(self.durations)[len(self.durations) // 2] if self.durations else 2.0
        killed = self.run(kill_after=self.rng.uniform(0.02, typical * 1.1), real=real)
        if killed:
            self.fig.kills += 1
            if real:
                self.fig.real_process_kills += 1
            else:
                self.fig.random_kills += 1

    def kill_named(self, name: str):
        n = 1 if name in ("mid_sweep", "after_sweep", "mid_checkpoint", "before_replace", "after_replace") \
            else self.rng.randint(1, 4)
        if self.run(crash_at=f"{name}:{n}"):
            self.fig.kills += 1
            self.fig.named_kills[name] = self.fig.named_kills.get(name, 0) + 1

    def finish(self):
        """A run that completes: everything on disk is indexed, and a second run embeds nothing."""
        self.run()
        self.run()
        with Library.open(self.lib, create=False) as lib:
            assert lib.status()["images"] == len(list(self.photos.rglob("*.png")))


def migration_kills(tmp: Path, model: str, zygote: Zygote, photos: Path, times: int) -> int:
    kills = 0
    for i in range(times):
        lib = tmp / f"mig{i}"
        argv = ["index", str(photos), "--library", str(lib), "--model", model, "-q"]
        code = zygote.run(argv, {"CLIPSEARCH_CRASH_AT": "mid_migration"}, tmp / "o", tmp / "e")
        assert code == -signal.SIGKILL
        kills += 1
        with Library.open(lib, create=False) as opened:  # the schema was rolled back whole: it migrates again
            assert opened.check().ok
        assert zygote.run(argv, {}, tmp / "o", tmp / "e") == 0, (tmp / "e").read_text()
        with Library.open(lib, create=False) as opened:
            assert opened.check().ok and opened.status()["images"] == len(list(photos.rglob("*.png")))
    return kills


def crash_campaign(tmp: Path, model: str, *, rounds: int, seed: int) -> Figures:
    h = Harness(tmp, model, seed)
    try:
        h.add(40)
        h.run()  # the first full run also times a typical run
        for r in range(rounds):
            h.mutate()
            h.kill_random()
            h.mutate()
            h.kill_named(NAMED[r % len(NAMED)])
            h.kill_random()
            if r % 4 == 3:
                h.finish()
        h.mutate()
        h.kill_random(real=True)
        h.kill_named("after_commit")
        h.finish()
        small = tmp / "small"
        for i in range(6):
            make_image(small / f"s{i}.png", 90_000 + i, size=(32, 32))
        h.fig.named_kills["mid_migration"] = migration_kills(tmp, model, h.zygote, small, 2)
        h.fig.kills += h.fig.named_kills["mid_migration"]
    finally:
        h.zygote.close()
    return h.fig


def _report(fig: Figures, seconds: float) -> None:
    print(f"\ncrash harness: {fig.kills} kills ({fig.random_kills} random, {fig.real_process_kills} random of a real "
          f"`python -m clipsearch` process, named {fig.named_kills}); {fig.runs} child runs, {fig.checks} checks "
          f"passed; {fig.batches_verified} acknowledged batches verified; {fig.lost_batches} uncommitted batches "
          f"lost to kills, {fig.reembedded_batches} re-embedded by the rerun (max {fig.max_redone_per_kill} per "
          f"kill); committed images re-embedded: {fig.reembedded_committed}; {seconds:.0f} s")


def test_crash_harness(tmp_path, tiny_model):
    t0 = time.monotonic()
    fig = crash_campaign(tmp_path, tiny_model, rounds=24, seed=1234)
    _report(fig, time.monotonic() - t0)
    assert fig.kills >= 50
    assert fig.reembedded_committed == 0 and fig.max_redone_per_kill <= 1
    assert all(fig.named_kills.get(n, 0) >= 1 for n in NAMED + ["mid_migration"]), fig.named_kills


@pytest.mark.slow
def test_crash_harness_long(tmp_path, tiny_model):
    t0 = time.monotonic()
    fig = crash_campaign(tmp_path, tiny_model, rounds=int(os.environ.get("CLIPSEARCH_CRASH_ROUNDS", "120")),
                         seed=int(os.environ.get("CLIPSEARCH_CRASH_SEED", "99")))
    _report(fig, time.monotonic() - t0)
    assert fig.reembedded_committed == 0 and fig.max_redone_per_kill <= 1
