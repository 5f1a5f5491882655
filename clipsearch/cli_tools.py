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
              help="Largest pixel distance (0-1) of one picture re-encoded, resized or lightly cropped (default 0.04).")
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


def register(cli: click.Group) -> None:
    for command in (duplicates, ls, forget):
        cli.add_command(command)
