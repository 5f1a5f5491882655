"""Duplicates, told apart by kind: exact copies, the same picture re-encoded, and (when asked) similar ones.

    groups = find_duplicates(reader)                   # [Group(kind, score, ids, paths)], largest first
    find_duplicates(reader, similar=True)              # bursts and the same scene too
    collapse(results, reader)                          # one result per "same picture" group

- exact: files with the same content hash (they share one embedding);
- same picture: vectors at least `threshold` apart in cosine, confirmed by a pixel check (picture.py)
  that tolerates re-encoding, resizing, light cropping, format changes and EXIF rotation, and refuses
  two different pictures of the same thing (which the model's vectors alone cannot tell apart);
- similar (only with `similar=True`): cosine at least `similar_threshold`, pixels not the same picture.

Candidate pairs come from the vector index (vector_index.neighbour_pairs: FAISS range search, or IVF
k-NN on large libraries), never from an all-pairs loop. The thresholds are calibrated by
benchmarks/duplicates.py; the cosine threshold depends on the model (DEFAULT_THRESHOLDS) and is a
setting (`--threshold`, `[duplicates] threshold` in the config file).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np

from . import picture

EXACT, SAME, SIMILAR = "exact", "same picture", "similar"
# the cosine at or above which two vectors are candidates for "same picture", by model (benchmarks/duplicates.py)
DEFAULT_THRESHOLDS = {"shapes": 0.99}
DEFAULT_THRESHOLD = 0.95  # any other model; ViT-B-32 figures in the README are for random weights: set your own
DEFAULT_SIMILAR_THRESHOLD = {"shapes": 0.98}
DEFAULT_SIMILAR = 0.90
LINK_MEMBERS = 3  # members of each group compared before two groups become one (_groups_agree)
LINK_SLACK = 1.25

ProgressCallback = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class Group:
    kind: str  # exact | same picture | similar
    score: float  # the lowest cosine of the pairs that joined the group (1.0 for exact copies)
    ids: list[int]  # embedding ids, one per distinct content
    paths: list[str] = field(default_factory=list)  # every live file of those contents
    distance: float | None = None  # the largest pixel distance that joined a same-picture group

    @property
    def size(self) -> int:
        return len(self.paths)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "score": round(float(self.score), 6), "size": self.size, "ids": self.ids,
                "paths": self.paths,
                "pixel_distance": None if self.distance is None else round(float(self.distance), 4)}


def default_threshold(model: str | None) -> float:
    return DEFAULT_THRESHOLDS.get(model or "", DEFAULT_THRESHOLD)


def default_similar_threshold(model: str | None) -> float:
    return DEFAULT_SIMILAR_THRESHOLD.get(model or "", DEFAULT_SIMILAR)


class _Sets:
    """Union-find over positions."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)

    def groups(self, members) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for i in members:
            out.setdefault(self.find(i), []).append(i)
        return out


class _Distances:
    """Pixel distances between contents (embedding ids), each computed once; inf when either picture cannot
    be read now (a file offline or unreadable: not called the same picture)."""

    def __init__(self, pictures: picture.PictureCache, pixel_threshold: float):
        self.pictures = pictures
        self.give_up_above = 3 * pixel_threshold
        self.known: dict[tuple[int, int], float] = {}

    def __call__(self, a: int, b: int) -> float:
        key = (min(a, b), max(a, b))
        if key not in self.known:
            pa, pb = self.pictures.get(a), self.pictures.get(b)
            self.known[key] = (float("inf") if pa is None or pb is None
                               else picture.distance(pa, pb, give_up_above=self.give_up_above))
        return self.known[key]


def _groups_agree(a: list[int], b: list[int], distance: Callable[[int, int], float], threshold: float) -> bool:
    """Whether two groups, each one picture, are one picture together: the median pixel distance between their
    first members is within LINK_SLACK of the threshold. One close pair is not enough: a light crop of one
    render can lie within the threshold of another render of the same caption while the two renders, frame
    to frame, do not, and one such pair would chain both groups into one."""
    if len(a) == 1 and len(b) == 1:
        return True  # the pair itself has been checked
    return float(np.median([distance(x, y) for x in a for y in b])) <= LINK_SLACK * threshold


def find_duplicates(reader, *, threshold: float | None = None, similar: bool = False,
                    similar_threshold: float | None = None, pixel_threshold: float = picture.PIXEL_THRESHOLD,
                    verify: bool = True, on_progress: ProgressCallback | None = None) -> list[Group]:
    """Duplicate groups of a library (a Reader or Library), largest first.

    verify=False decides "same picture" by the cosine alone (fast, no file is read; wrong wherever the
    model cannot tell two pictures of one thing apart, as on the demo domain)."""
    from ..vector_index import neighbour_pairs

    catalog = reader.catalog
    model = catalog.get_meta("model")
    threshold = default_threshold(model) if threshold is None else float(threshold)
    similar_threshold = default_similar_threshold(model) if similar_threshold is None else float(similar_threshold)
    if similar:
        similar_threshold = min(similar_threshold, threshold)
    progress = on_progress or (lambda stage, done, total: None)
    index = reader.vector_index()
    ids, vectors = index.ids(), index.vectors()
    low = similar_threshold if similar else threshold
    pi, pj, ps = neighbour_pairs(vectors, low, on_progress=lambda d, t: progress("searching", d, t))
    involved = sorted({int(ids[i]) for i in np.concatenate([pi, pj])})
    paths = catalog.files_for_embeddings(involved)
    for eid, ps_ in catalog.shared_embeddings().items():
        paths.setdefault(eid, ps_)
    live = [i for i in range(len(ids)) if int(ids[i]) in paths]

    same = _Sets(len(ids))
    same_score: dict[int, float] = {}
    same_dist: dict[int, float] = {}
    candidates = np.flatnonzero(ps >= threshold)
    pictures = picture.PictureCache(paths, max_pixels=getattr(reader, "max_pixels", None) or 10**8) if verify else None
    not_same = np.ones(len(pi), dtype=bool)
    sample: dict[int, list[int]] = {}  # group root -> its first LINK_MEMBERS members (positions)
    by_id = _Distances(pictures, pixel_threshold) if verify else None

    def pixel_distance(a: int, b: int) -> float:
        return by_id(int(ids[a]), int(ids[b]))

    for n, k in enumerate(candidates[np.argsort(-ps[candidates], kind="stable")]):
        a, b = int(pi[k]), int(pj[k])
        if int(ids[a]) not in paths or int(ids[b]) not in paths:
            continue  # no live file any more
        if same.find(a) == same.find(b):
            not_same[k] = False
            progress("checking", n + 1, len(candidates))
            continue  # joined through other pairs already
        d = None
        ra, rb = same.find(a), same.find(b)
        if verify:
            d = pixel_distance(a, b)
            if d > pixel_threshold or not _groups_agree(sample.get(ra, [a]), sample.get(rb, [b]), pixel_distance,
                                                        pixel_threshold):
                progress("checking", n + 1, len(candidates))
                continue
        not_same[k] = False
        score = min(float(ps[k]), same_score.get(ra, 1.0), same_score.get(rb, 1.0))
        dist = max([x for x in (d, same_dist.get(ra), same_dist.get(rb)) if x is not None], default=None)
        same.union(a, b)
        r = same.find(a)
        sample[r] = (sample.get(ra, [a]) + sample.get(rb, [b]))[:LINK_MEMBERS]
        same_score[r] = score
        if dist is not None:
            same_dist[r] = dist
        progress("checking", n + 1, len(candidates))

    groups: list[Group] = []
    units = same.groups(live)
    for root, members in units.items():
        member_ids = sorted(int(ids[m]) for m in members)
        files = sorted(p for e in member_ids for p in paths[e])
        if len(member_ids) > 1:
            groups.append(Group(SAME, same_score.get(root, 1.0), member_ids, [os.fsdecode(p) for p in files],
                                same_dist.get(root)))
        elif len(files) > 1:
            groups.append(Group(EXACT, 1.0, member_ids, [os.fsdecode(p) for p in files]))

    if similar:
        near = _Sets(len(ids))
        near_score: dict[int, float] = {}
        for k in np.flatnonzero(not_same & (ps >= similar_threshold)):
            a, b = same.find(int(pi[k])), same.find(int(pj[k]))
            if a == b or int(ids[a]) not in paths or int(ids[b]) not in paths:
                continue
            ra, rb = near.find(a), near.find(b)
            score = min(float(ps[k]), near_score.get(ra, 1.0), near_score.get(rb, 1.0))
            near.union(a, b)
            near_score[near.find(a)] = score
        for root, members in near.groups(units).items():
            if len(members) < 2:
                continue
            member_ids = sorted(int(ids[m]) for u in members for m in units[u])
            files = sorted(p for e in member_ids for p in paths[e])
            groups.append(Group(SIMILAR, near_score.get(root, 1.0), member_ids, [os.fsdecode(p) for p in files]))
    order = {EXACT: 0, SAME: 1, SIMILAR: 2}
    groups.sort(key=lambda g: (-g.size, order[g.kind], -g.score, g.paths[0]))
    return groups


def collapse(results: Sequence, reader, *, threshold: float | None = None,
             pixel_threshold: float = picture.PIXEL_THRESHOLD, verify: bool = True) -> list:
    """Search results with one result per "same picture" group: the best-ranked one stays, the others
    (exact copies, re-encoded or resized copies) are dropped; ranks are renumbered. Works on anything with
    `embedding_id`, `path` and `rank` (search.Result)."""
    catalog = reader.catalog
    threshold = default_threshold(catalog.get_meta("model")) if threshold is None else float(threshold)
    kept: list = []
    members: list[list[int]] = []  # per kept result: every content (embedding id) folded into it so far
    seen_ids: set[int] = set()
    pictures = picture.PictureCache({}, max_pixels=getattr(reader, "max_pixels", None) or 10**8)

    pixel_distance = _Distances(pictures, pixel_threshold)
    vectors: dict[int, np.ndarray] = {}

    def joins(eid: int, group: list[int]) -> bool:
        """Whether a result is the same picture as a group: one member close (cosine, then pixels), and, as
        find_duplicates asks, the group's first members agreeing."""
        close = [o for o in group if float(vectors[o] @ vectors[eid]) >= threshold]
        if not close or not verify:
            return bool(close)
        return (any(pixel_distance(eid, o) <= pixel_threshold for o in close)
                and _groups_agree([eid], group[:LINK_MEMBERS], pixel_distance, pixel_threshold))

    for r in results:
        eid = int(r.embedding_id)
        if eid in seen_ids:
            continue  # an exact copy of a result already kept
        seen_ids.add(eid)
        found = catalog.embedding(eid)
        if found is None:
            kept.append(r)
            members.append([])
            continue
        vectors[eid], files = found
        pictures.paths[eid] = files
        homes = [n for n, g in enumerate(members) if g and joins(eid, g)]
        if homes:
            # its first group's best-ranked result stands for it; groups it joins (a copy that matches both
            # an earlier crop and an earlier re-encoding the two did not match each other) become one when
            # their first members agree
            home = members[homes[0]]
            home.append(eid)
            for n in homes[1:]:
                if not verify or _groups_agree(home[:LINK_MEMBERS], members[n][:LINK_MEMBERS], pixel_distance,
                                               pixel_threshold):
                    home.extend(members[n])
                    members[n] = []
                    kept[n] = None
            continue
        kept.append(r)
        members.append([eid])
    kept = [r for r in kept if r is not None]
    out = []
    for i, r in enumerate(kept):
        try:
            out.append(replace(r, rank=i + 1))
        except TypeError:
            out.append(r)
    return out
