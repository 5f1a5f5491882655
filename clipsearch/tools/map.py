"""A map of the library's embedding space: every image at its 2-D projection, drawn as a thumbnail.

    m = build_map(reader, queries=["a red circle"], color_by="folder")
    write_html(m, "map.html")    # one self-contained file: thumbnails as data URIs, no network
    write_png(m, "map.png")      # Pillow drawing
    write_json(m, "map.json")    # the coordinates, for scripts

PCA (numpy) always; UMAP (`pip install clipsearch[map]`, umap-learn) when asked or, with "auto", when
it is installed. Text queries are embedded by the model's text tower and drawn as labelled points where their best
matches are: the mean position of their QUERY_NEIGHBOURS most similar images, weighted by similarity
(projecting the text vector itself would place it by the modality gap, far from the images it finds). Colour says the folder or the tag.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import imaging
from ..errors import ConfigError, EmptyLibraryError

PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#fabed4",
           "#469990", "#dcbeff", "#9a6324", "#800000", "#aaffc3", "#808000", "#000075", "#a9a9a9"]
MAX_THUMBNAILS = 2000  # beyond, the rest are drawn as dots (a map of 100k thumbnails would not load)
THUMB = 48
QUERY_NEIGHBOURS = 5
METHODS = ("auto", "pca", "umap")


@dataclass
class MapPoint:
    id: int
    path: str
    x: float
    y: float
    group: str


@dataclass
class Map:
    method: str
    color_by: str
    points: list[MapPoint]
    queries: list[tuple[str, float, float]] = field(default_factory=list)  # (text, x, y)

    def groups(self) -> list[str]:
        return sorted({p.group for p in self.points})

    def to_dict(self) -> dict:
        return {"method": self.method, "color_by": self.color_by,
                "points": [{"id": p.id, "path": p.path, "x": round(p.x, 5), "y": round(p.y, 5), "group": p.group}
                           for p in self.points],
                "queries": [{"text": t, "x": round(x, 5), "y": round(y, 5)} for t, x, y in self.queries]}


def _umap_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("umap") is not None


def project(vectors: np.ndarray, extra: np.ndarray | None = None, *, method: str = "auto", seed: int = 0):
    """2-D coordinates of `vectors` (and of `extra` by the same map). Returns (coords, extra coords, method)."""
    if method not in METHODS:
        raise ConfigError(f"projection must be one of {', '.join(METHODS)}, not {method!r}")
    x = np.asarray(vectors, np.float64)
    e = np.empty((0, x.shape[1])) if extra is None else np.asarray(extra, np.float64)
    use_umap = method == "umap" or (method == "auto" and _umap_available() and len(x) >= 30)
    if method == "umap" and not _umap_available():
        raise ConfigError("UMAP needs umap-learn: pip install 'clipsearch[map]' (or use --method pca)")
    if use_umap:
        import umap

        reducer = umap.UMAP(n_components=2, metric="cosine", random_state=seed, n_neighbors=min(15, len(x) - 1))
        coords = reducer.fit_transform(x)
        return coords, (reducer.transform(e) if len(e) else np.empty((0, 2))), "umap"
    mean = x.mean(axis=0)
    if len(x) < 2:
        return np.zeros((len(x), 2)), np.zeros((len(e), 2)), "pca"
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    axes = vt[:2].T
    if axes.shape[1] < 2:
        axes = np.pad(axes, ((0, 0), (0, 2 - axes.shape[1])))
    return (x - mean) @ axes, (e - mean) @ axes, "pca"


def build_map(reader, *, queries: Sequence[str] = (), color_by: str = "folder", method: str = "auto") -> Map:
    """The library's images (one point per live file) and the queries, projected to 2-D."""
    if color_by not in ("folder", "tag"):
        raise ConfigError(f"color by folder or tag, not {color_by!r}")
    index = reader.vector_index()
    ids, vecs = index.ids(), index.vectors()
    if len(ids) == 0:
        raise EmptyLibraryError("the library has no images to map; run `clipsearch index DIR`")
    coords, _, used = project(vecs, method=method)
    qcoords = np.empty((0, 2))
    if queries:
        scores = np.asarray(reader.embed_texts(list(queries)), np.float64) @ np.asarray(vecs, np.float64).T
        k = min(QUERY_NEIGHBOURS, len(ids))
        best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        w = np.maximum(np.take_along_axis(scores, best, axis=1), 1e-6)
        qcoords = (coords[best] * w[..., None]).sum(axis=1) / w.sum(axis=1, keepdims=True)
    files = reader.catalog.files_for_embeddings(ids.tolist())
    tags = reader.catalog.tags_of(ids.tolist()) if color_by == "tag" else {}
    points = []
    for (x, y), eid in zip(coords.tolist(), ids.tolist()):
        for p in files.get(eid, ()):
            path = os.fsdecode(p)
            group = (tags[eid][0][0] if tags.get(eid) else "(no tag)") if color_by == "tag" else os.path.dirname(path)
            points.append(MapPoint(int(eid), path, float(x), float(y), group))
    return Map(used, color_by, points, [(t, float(x), float(y)) for t, (x, y) in zip(queries, qcoords.tolist())])


def write_json(m: Map, out: str | os.PathLike) -> None:
    Path(out).write_text(json.dumps(m.to_dict(), indent=1))


def _thumbnail(path: str, size: int = THUMB):
    """A small RGB copy of the file, or None when it cannot be read now."""
    try:
        with open(path, "rb") as f:
            data = f.read(256 * 1024 * 1024)
        img, _ = imaging.decode(data, draft=size)
    except (OSError, imaging.ImageError):
        return None
    img.thumbnail((size, size))
    return img


def _colors(m: Map) -> dict[str, str]:
    return {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(m.groups())}


def _layout(m: Map, width: int, height: int, margin: int):
    """Canvas positions of the points and the queries (the same scale on both axes)."""
    xy = np.array([[p.x, p.y] for p in m.points] + [[x, y] for _, x, y in m.queries], np.float64)
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    span = np.maximum(hi - lo, 1e-9)
    scale = min((width - 2 * margin) / span[0], (height - 2 * margin) / span[1])
    offset = (np.array([width, height]) - span * scale) / 2
    pix = (xy - lo) * scale + offset
    pix[:, 1] = height - pix[:, 1]  # y up
    return pix[:len(m.points)], pix[len(m.points):]


def _sampled(m: Map) -> set[int]:
    if len(m.points) <= MAX_THUMBNAILS:
        return set(range(len(m.points)))
    rng = np.random.default_rng(0)
    return set(rng.choice(len(m.points), size=MAX_THUMBNAILS, replace=False).tolist())


def write_png(m: Map, out: str | os.PathLike, *, width: int = 1600, height: int = 1200) -> None:
    from PIL import Image, ImageDraw, ImageFont

    canvas = Image.new("RGB", (width, height), (250, 250, 250))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=16)
    colors = _colors(m)
    pix, qpix = _layout(m, width - 260, height, THUMB)
    shown = _sampled(m)
    for i, (p, (cx, cy)) in enumerate(zip(m.points, pix.tolist())):
        color = colors[p.group]
        thumb = _thumbnail(p.path) if i in shown else None
        if thumb is None:
            draw.ellipse([cx - 4, cy - 4, cx + 4, cy + 4], fill=color)
            continue
        w, h = thumb.size
        x0, y0 = int(cx - w / 2), int(cy - h / 2)
        draw.rectangle([x0 - 3, y0 - 3, x0 + w + 2, y0 + h + 2], fill=color)
        canvas.paste(thumb, (x0, y0))
    for (text, _, _), (cx, cy) in zip(m.queries, qpix.tolist()):
        draw.ellipse([cx - 9, cy - 9, cx + 9, cy + 9], fill=(0, 0, 0), outline=(255, 255, 255), width=2)
        draw.text((cx + 12, cy - 10), text, fill=(0, 0, 0), font=font, stroke_width=3, stroke_fill=(255, 255, 255))
    lx = width - 250
    draw.text((lx, 16), f"{m.method.upper()}, colour by {m.color_by}", fill=(0, 0, 0), font=font)
    for n, (g, color) in enumerate(colors.items()):
        y = 44 + 24 * n
        if y > height - 30:
            draw.text((lx, y), f"... {len(colors) - n} more", fill=(0, 0, 0), font=font)
            break
        draw.rectangle([lx, y, lx + 16, y + 16], fill=color)
        label = g if len(g) <= 26 else "..." + g[-25:]
        draw.text((lx + 24, y - 1), label, fill=(0, 0, 0), font=font)
    canvas.save(out, format="PNG")


def _data_uri(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def write_html(m: Map, out: str | os.PathLike, *, width: int = 1600, height: int = 1200) -> None:
    """One self-contained HTML file: an SVG with the thumbnails inline (data URIs), hover titles, a legend."""
    colors = _colors(m)
    pix, qpix = _layout(m, width, height, THUMB)
    shown = _sampled(m)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" style="background:#fafafa">']
    for i, (p, (cx, cy)) in enumerate(zip(m.points, pix.tolist())):
        color = colors[p.group]
        title = html.escape(f"{p.path} (id {p.id}, {p.group})")
        thumb = _thumbnail(p.path) if i in shown else None
        if thumb is None:
            parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="{color}"><title>{title}</title></circle>')
            continue
        w, h = thumb.size
        x0, y0 = cx - w / 2, cy - h / 2
        parts.append(f'<g><title>{title}</title><rect x="{x0 - 3:.1f}" y="{y0 - 3:.1f}" width="{w + 6}" '
                     f'height="{h + 6}" fill="{color}"/><image x="{x0:.1f}" y="{y0:.1f}" width="{w}" height="{h}" '
                     f'href="{_data_uri(thumb)}"/></g>')
    for (text, _, _), (cx, cy) in zip(m.queries, qpix.tolist()):
        t = html.escape(text)
        parts.append(f'<g><circle cx="{cx:.1f}" cy="{cy:.1f}" r="9" fill="black" stroke="white" stroke-width="2"/>'
                     f'<text x="{cx + 12:.1f}" y="{cy + 5:.1f}" font-family="sans-serif" font-size="16" '
                     f'stroke="white" stroke-width="4" paint-order="stroke">{t}</text></g>')
    parts.append("</svg>")
    legend = "".join(f'<li><span style="background:{c}"></span>{html.escape(g)}</li>' for g, c in colors.items())
    doc = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>clipsearch map</title>
<style>body{{font-family:sans-serif;margin:12px}} ul{{list-style:none;padding:0;columns:3}}
li span{{display:inline-block;width:14px;height:14px;margin-right:6px;vertical-align:middle}}</style></head>
<body><h1>clipsearch map</h1><p>{len(m.points)} images, {m.method.upper()} projection, colour by {m.color_by};
black points are text queries. Hover for the path.</p><ul>{legend}</ul>
{''.join(parts)}
</body></html>
"""
    Path(out).write_text(doc, encoding="utf-8")
