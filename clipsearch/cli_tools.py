"""The commands for knowing a library: duplicates, classify, tag, map, ls, forget (clipsearch/tools/)."""

from __future__ import annotations

import os
import sys

import click

from .cli import echo_bytes, handle_errors, library_option, open_library, print_json


def _bar(desc: str, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=0, desc=desc, disable=quiet, file=sys.stderr, dynamic_ncols=True, leave=False)


def _progress(quiet: bool):
    """A (stage, done, total) callback drawing one bar per stage on stderr, and a function closing it."""
    state = {"stage": None, "bar": None}

    def progress(stage: str, done: int, total: int) -> None:
        if state["stage"] != stage:
            if state["bar"] is not None:
                state["bar"].close()
            state["stage"], state["bar"] = stage, _bar(stage, quiet)
            state["bar"].total = total
        bar = state["bar"]
        bar.total = total
        bar.n = done
        bar.refresh()

    def close() -> None:
        if state["bar"] is not None:
            state["bar"].close()

    return progress, close


@click.command()
@library_option
@click.option("--threshold", type=click.FloatRange(-1.0, 1.0), default=None, envvar="CLIPSEARCH_DUPLICATES_THRESHOLD",
              show_envvar=True,
              help="Cosine at or above which two images are candidates for 'same picture' (default: the model's "
                   "calibrated value, 0.99 for the demo model, 0.95 otherwise; config key [duplicates] threshold).")
@click.option("--pixel-threshold", type=click.FloatRange(0.0, 1.0), default=None,
              help="Largest pixel distance (0-1) of one picture re-encoded, resized or lightly cropped (default 0.049).")
@click.option("--similar", is_flag=True, help="Also list groups of similar images (bursts, the same scene).")
@click.option("--similar-threshold", type=click.FloatRange(-1.0, 1.0), default=None,
              help="Cosine at or above which images are 'similar' (with --similar).")
@click.option("--no-verify", is_flag=True,
              help="Decide 'same picture' by the cosine alone (reads no file; wrong where the model cannot tell two "
                   "pictures of one thing apart).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print {groups: [{kind, score, size, ids, paths}]}.")
@handle_errors
def duplicates(library, threshold, pixel_threshold, similar, similar_threshold, no_verify, quiet, as_json):
    """Groups of duplicate images, largest first: exact copies (same content), the same picture
    (re-encoded, resized, lightly cropped) and, with --similar, similar images."""
    from .tools import picture
    from .tools.duplicates import find_duplicates

    progress, close = _progress(quiet)
    with open_library(library, create=False) as lib:
        try:
            groups = find_duplicates(lib.reader, threshold=threshold, similar=similar,
                                     similar_threshold=similar_threshold,
                                     pixel_threshold=picture.PIXEL_THRESHOLD if pixel_threshold is None else pixel_threshold,
                                     verify=not no_verify, on_progress=progress)
        finally:
            close()
    if as_json:
        print_json({"groups": [g.to_dict() for g in groups]})
        return
    for g in groups:
        click.echo(f"{g.kind} ({g.size} files, score {g.score:.4f})")
        for p in g.paths:
            echo_bytes(f"  {p}")
    counts = {k: sum(1 for g in groups if g.kind == k) for k in ("exact", "same picture", "similar")}
    shown = ", ".join(f"{n} {k}" for k, n in counts.items() if n or k != "similar" or similar)
    click.echo(f"{len(groups)} group(s): {shown}", err=True)


@click.command("ls")
@library_option
@click.option("--failed", is_flag=True, help="Only the files that could not be indexed, with the reason.")
@click.option("--root", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Only files under this folder.")
@click.option("--json", "as_json", is_flag=True, help="Print [{path, status, reason, id, size, width, height, offline}].")
@handle_errors
def ls(library, failed, root, as_json):
    """List the indexed files with their status (ok or failed, and offline when their folder is not mounted)."""
    from .tools.manage import list_files

    with open_library(library, create=False) as lib:
        entries = list(list_files(lib.catalog, root=root, failed=failed))
    if as_json:
        print_json([e.to_dict() for e in entries])
        return
    for e in entries:
        status = e.status + (",offline" if e.offline else "")
        line = f"{status:<10} {e.path}"
        if e.reason:
            line += f": {e.reason}"
        echo_bytes(line)
    click.echo(f"{len(entries)} file(s)", err=True)


@click.command()
@click.argument("root", type=click.Path(file_okay=False, path_type=str))
@library_option
@click.option("--json", "as_json", is_flag=True, help="Print {root, files, seq}.")
@handle_errors
def forget(root, library, as_json):
    """Remove a folder (a root the library indexes) and its files from the library. The files themselves
    are not touched; `clipsearch index ROOT` adds them back (their vectors are kept, no model run)."""
    from .tools.manage import forget as forget_root

    with open_library(library, create=False) as lib:
        report = forget_root(lib, root)
    if as_json:
        print_json(report.to_dict())
        return
    echo_bytes(f"forgot {report.root}: {report.files} file(s) removed from the library", err=True)


def _labels_options(f):
    f = click.option("--template", "templates", multiple=True,
                     help="A prompt template with {} for the label (repeatable; default: the model's ensemble).")(f)
    f = click.option("--labels-file", type=click.Path(exists=True, dir_okay=False, path_type=str), default=None,
                     help="Labels, one a line (or comma-separated).")(f)
    f = click.option("--labels", default=None, help='Comma-separated labels, e.g. "a dog,a cat,a car".')(f)
    return f


@click.command()
@click.argument("images", nargs=-1, type=str)
@_labels_options
@click.option("--library-wide", is_flag=True, help="Label every indexed image (from the stored vectors).")
@click.option("-k", "--top", "k", default=3, show_default=True, type=click.IntRange(1, 1000), help="Labels per image.")
@library_option
@click.option("--json", "as_json", is_flag=True, help="Print [{path, id, labels: [{label, probability}]}].")
@handle_errors
def classify(images, labels, labels_file, templates, library_wide, k, library, as_json):
    """Zero-shot labels for IMAGE files (or, with --library-wide, every indexed image) with the library's model:
    each label's prompts averaged, softmax over the model's own logit scale times the cosine. Indexed images
    use their stored vectors."""
    from .tools.classify import Classification, classify as classify_images, classify_library, parse_labels

    if library_wide == bool(images):
        raise click.UsageError("give IMAGE files or --library-wide (one of them)")
    wanted = parse_labels(labels, labels_file)
    with open_library(library, create=False) as lib:
        if library_wide:
            rows = classify_library(lib.reader, wanted, k=k, templates=templates or None)
            found = [Classification(p, eid, top) for eid, paths, top in rows for p in paths]
            found.sort(key=lambda c: c.path)
        else:
            found = classify_images(lib.reader, images, wanted, k=k, templates=templates or None)
    if as_json:
        print_json([c.to_dict() for c in found])
        return
    for c in found:
        echo_bytes(c.path)
        for label, p in c.labels:
            click.echo(f"  {p:.4f}  {label}")


@click.command()
@_labels_options
@click.option("-k", "--top", "k", default=1, show_default=True, type=click.IntRange(1, 100),
              help="Tags per image (its most probable labels).")
@click.option("--min-probability", default=0.0, show_default=True, type=click.FloatRange(0.0, 1.0),
              help="Leave out labels less probable than this.")
@library_option
@click.option("--json", "as_json", is_flag=True, help="Print {tag: images}.")
@handle_errors
def tag(labels, labels_file, templates, k, min_probability, library, as_json):
    """Tag every indexed image with its most probable labels (zero-shot, stored vectors), replacing its old tags.
    Search filters can then select images by tag."""
    from .tools.classify import parse_labels, tag_library

    wanted = parse_labels(labels, labels_file)
    with open_library(library, create=False) as lib:
        counts = tag_library(lib, wanted, k=k, min_probability=min_probability, templates=templates or None)
    if as_json:
        print_json(counts)
        return
    for label in wanted:
        click.echo(f"{counts.get(label, 0):>7}  {label}")


@click.command("map")
@click.option("--out", "outs", multiple=True, required=True, type=click.Path(dir_okay=False, path_type=str),
              help="Where to write the map: .html (self-contained), .png, or .json (coordinates); repeatable.")
@click.option("--query", "queries", multiple=True, help="A text to place on the map as a labelled point (repeatable).")
@click.option("--color-by", type=click.Choice(["folder", "tag"]), default="folder", show_default=True)
@click.option("--method", type=click.Choice(["auto", "pca", "umap"]), default="auto", show_default=True,
              help="auto: UMAP when umap-learn is installed (pip install 'clipsearch[map]'), else PCA.")
@library_option
@handle_errors
def map_command(outs, queries, color_by, method, library):
    """Draw the library's embedding space in 2-D with thumbnails, so clusters can be seen."""
    from .tools.map import build_map, write_html, write_json, write_png

    writers = {".html": write_html, ".htm": write_html, ".png": write_png, ".json": write_json}
    for out in outs:
        if os.path.splitext(out)[1].lower() not in writers:
            raise click.BadParameter(f"{out}: the map is written as .html, .png or .json", param_hint="--out")
    from .query import check_query_text

    for q in queries:
        try:
            check_query_text(q)
        except Exception as e:
            raise click.BadParameter(str(e), param_hint="--query") from None
    with open_library(library, create=False) as lib:
        m = build_map(lib.reader, queries=list(queries), color_by=color_by, method=method)
    for out in outs:
        writers[os.path.splitext(out)[1].lower()](m, out)
        echo_bytes(f"wrote {out} ({len(m.points)} images, {m.method})", err=True)


def register(cli: click.Group) -> None:
    for command in (duplicates, ls, forget, classify, tag, map_command):
        cli.add_command(command)
