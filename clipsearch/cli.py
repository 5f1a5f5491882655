"""The command line: the only module that prints, exits or reads the environment."""

from __future__ import annotations

import functools
import json
import os
import sys

import click

from .errors import ClipSearchError

MODEL_HELP = ("ARCH:PRETRAINED as open_clip names it (fetched into the Hugging Face cache), ARCH:/path/to/weights, "
              "a checkpoint directory from `clipsearch train`, or `shapes` (the offline demo model). "
              "Only needed when creating a library: a library remembers its model.")


def default_library() -> str:
    import platformdirs

    return platformdirs.user_data_dir("clipsearch")


def library_option(f):
    return click.option(
        "--library", "library", type=click.Path(file_okay=False, path_type=str), envvar="CLIPSEARCH_HOME",
        default=None, show_envvar=True,
        help="Library directory (default: the platform's user data directory, e.g. ~/.local/share/clipsearch).",
    )(f)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C so that the same cleanup runs."""


def _raise_terminated(signum, frame):
    raise Terminated()


def handle_errors(f):
    """ClipSearchError -> one line on stderr and its exit code; Ctrl-C -> 130, SIGTERM -> 143.

    SIGTERM is turned into `Terminated` (a KeyboardInterrupt) while the command runs, so a batch being
    committed is finished or rolled back by its transaction, the cache is published and the lock released.
    """

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        import signal

        previous = signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            return f(*args, **kwargs)
        except ClipSearchError as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt as e:
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # a second Ctrl-C now exits at once
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            what = "Terminated" if isinstance(e, Terminated) else "Interrupted"
            click.echo(f"{what}; every committed batch is kept, the rest is indexed by the next run.", err=True)
            sys.exit(143 if isinstance(e, Terminated) else 130)
        finally:
            signal.signal(signal.SIGTERM, previous)

    return wrapper


def echo_bytes(text: str, *, err: bool = False) -> None:
    """Print a line whose paths may hold bytes that are not UTF-8, exactly as the file system has them."""
    stream = sys.stderr if err else sys.stdout
    data = (text + "\n").encode(getattr(stream, "encoding", None) or "utf-8", "surrogateescape")
    buf = getattr(stream, "buffer", None)
    if buf is None:
        stream.write(data.decode("utf-8", "replace"))
    else:
        stream.flush()
        buf.write(data)
        buf.flush()


def print_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2))


def open_library(library: str | None, *, model: str | None = None, create: bool, **options):
    from .library import Library

    return Library.open(library or default_library(), model=model, create=create, **options)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="clipsearch")
def cli():
    """Semantic image search: index folders of photos, then search them by text or by example image."""


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True, file_okay=False, path_type=str))
@library_option
@click.option("--model", default=None, envvar="CLIPSEARCH_MODEL", help=MODEL_HELP)
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 4096))
@click.option("--workers", default=None, type=click.IntRange(1, 64), help="Decoding threads (default: the CPU count, up to 4).")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--precision", default="auto", show_default=True, type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
              help="auto: bf16 on CPUs with fast bfloat16 matmul, fp16 on CUDA, otherwise fp32.")
@click.option("--max-megapixels", default=100.0, show_default=True, type=click.FloatRange(0.01),
              help="Skip larger images (decompression-bomb guard).")
@click.option("--follow-symlinks", is_flag=True,
              help="Follow symbolic links to folders and files (each file once, loops end).")
@click.option("--allow-truncated", is_flag=True,
              help="Index truncated images as far as they can be read (with a warning) instead of skipping them.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@handle_errors
def index(paths, library, model, batch_size, workers, device, precision, max_megapixels, follow_symlinks,
          allow_truncated, quiet, as_json):
    """Index folders of images (all known folders when none is given).

    Incremental: unchanged files are not read again, changed files are re-embedded, deleted files
    leave the results, and renamed or copied files reuse their vectors.
    """
    from tqdm import tqdm

    with open_library(library, model=model, create=True, batch_size=batch_size, workers=workers, device=device,
                      precision=precision, max_pixels=int(max_megapixels * 1e6),
                      follow_symlinks=follow_symlinks, allow_truncated=allow_truncated) as lib:
        bar = tqdm(total=0, unit="img", desc="indexing", disable=quiet, file=sys.stderr, dynamic_ncols=True)

        def progress(kind: str, n: int) -> None:
            if kind == "found":
                bar.total += n
                bar.refresh()
            else:
                bar.update(n)

        try:
            report = lib.index(list(paths) if paths else None, on_progress=progress)
        finally:
            bar.close()
        failed = lib.catalog.counts()["failed"]  # this run's skipped files and earlier failures left unchanged
    if as_json:
        print_json({**report.to_dict(), "failed": failed})
        return
    for s in report.skipped:
        echo_bytes(f"skipped {s.path}: {s.reason}", err=True)
    for s in report.warnings:
        echo_bytes(f"warning {s.path}: {s.reason}", err=True)
    for s in report.incomplete:
        echo_bytes(f"could not read {s.path}: {s.reason} (nothing under it was removed)", err=True)
    click.echo(
        f"added {report.added}, updated {report.updated}, unchanged {report.unchanged}, removed {report.removed}, "
        f"skipped {len(report.skipped)} ({report.embedded} embedded, {report.reused} reused) in {report.seconds:.1f}s",
        err=True,
    )
    if failed:
        click.echo(f"{failed} file(s) of the library could not be indexed, this run or before (why: clipsearch ls --failed)",
                   err=True)


@cli.command()
@click.argument("text", required=False)
@click.option("--image", "image", type=str, default=None, help="Search by an example image instead of text.")
@click.option("-k", "--limit", "k", default=10, show_default=True, type=int, help="How many results.")
@library_option
@click.option("--model", default=None, envvar="CLIPSEARCH_MODEL", help="Must be the library's own model, if given.")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--precision", default="auto", show_default=True, type=click.Choice(["auto", "fp32", "bf16", "fp16"]))
@click.option("--min-score", type=float, default=None, help="Leave out results whose cosine score is lower.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of {rank, score, path, id}.")
@click.option("-0", "--null", "null", is_flag=True,
              help="Print only the paths, each ended by a NUL byte (for xargs -0: any file name is unambiguous).")
@click.option("--collapse", is_flag=True, help="Show one image per 'same picture' group (see `clipsearch duplicates`).")
@handle_errors
def query(text, image, k, library, model, device, precision, min_score, as_json, null, collapse):
    """Search the library by TEXT or by --image PATH; prints rank, score (cosine) and path."""
    if k < 1:
        raise click.BadParameter(f"k must be at least 1, not {k}", param_hint="-k/--limit")
    if (text is None) == (image is None):
        raise click.UsageError("give a query TEXT or --image PATH (one of them)")
    if text is not None:
        from .query import check_query_text

        try:
            check_query_text(text)
        except ClipSearchError as e:
            raise click.BadParameter(str(e), param_hint="TEXT") from None
    with open_library(library, model=model, create=False, device=device, precision=precision) as lib:
        if text is not None:
            results = lib.search(text, k=k, min_score=min_score)
        else:
            results = lib.search(image=image, k=k, min_score=min_score)
        if collapse:
            from .tools.duplicates import collapse as collapse_results

            results = collapse_results(results, lib.reader)
        from .tools.manage import offline_flags

        offline = offline_flags([r.path for r in results], lib.catalog)
    if as_json:
        print_json([{**r.to_dict(), "offline": off} for r, off in zip(results, offline)])
        return
    if null:
        sys.stdout.flush()
        sys.stdout.buffer.write(b"".join(os.fsencode(r.path) + b"\0" for r in results))
        sys.stdout.buffer.flush()
        return
    for r, off in zip(results, offline):
        echo_bytes(f"{r.rank:>3}  {r.score:.4f}  {r.path}" + ("  (offline)" if off else ""))


@cli.command()
@library_option
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def status(library, as_json):
    """The library's model, vector dimension, image count, folders and last index time."""
    with open_library(library, create=False) as lib:
        info = lib.status()
    if as_json:
        print_json(info)
        return
    for key in ("library", "model", "dim", "images", "failed", "offline", "deleted", "last_index"):
        click.echo(f"{key + ':':<12} {info[key] if info[key] is not None else '-'}")
    click.echo("roots:")
    for r in info["roots"]:
        echo_bytes(f"  {r}" + ("  (offline: not mounted or missing; its files are kept)" if r in info["offline_roots"] else ""))
    if info["failed"]:
        click.echo("see why files failed: clipsearch ls --failed", err=True)


@cli.command()
@library_option
@click.option("--repair", is_flag=True, help="Rebuild the search cache when it disagrees with the database "
                                             "(the database itself is never rewritten).")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@handle_errors
def check(library, repair, as_json):
    """Verify the library: database integrity, one finite unit vector per live image, and a search cache
    that agrees with the database. Exit status 1 when a problem is found (listed on stdout)."""
    with open_library(library, create=False) as lib:
        report = lib.check(repair=repair)
    if as_json:
        print_json(report.to_dict())
    else:
        for note in report.notes:
            echo_bytes(f"note: {note}", err=True)
        for problem in report.problems:
            echo_bytes(f"problem: {problem}")
        state = "ok" if report.ok else f"{len(report.problems)} problem(s)"
        click.echo(f"{state}: {report.files} images, {report.vectors} vectors of dimension {report.dim or '-'}, "
                   f"seq {report.seq}, cache {report.cache}" + (" (repaired)" if report.repaired else ""))
        if not report.ok and not repair and report.cache_problems and len(report.cache_problems) == len(report.problems):
            click.echo("run `clipsearch check --repair` to rebuild the cache", err=True)
    if not report.ok:
        sys.exit(1)


def _register_optional_commands() -> None:
    from .cli_tools import register as register_tools  # duplicates, classify, tag, map, ls, forget

    register_tools(cli)
    try:
        from .cli_training import register
    except ModuleNotFoundError as e:  # a trimmed install without the training toolkit
        if e.name != "clipsearch.cli_training":
            raise
        return
    register(cli)


_register_optional_commands()


def main() -> None:
    # numpy's OpenBLAS (the query's text tower and vector search) runs one thread: its spinning worker threads
    # made a query 10x slower when another process kept the other core busy (measured); must precede numpy's import
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from . import _crashpoints
    from .config import config_path, load_default_map

    _crashpoints.configure(os.environ)  # test-only crash points; off unless CLIPSEARCH_CRASH_* is set

    try:
        default_map = load_default_map(config_path(dict(os.environ)))
    except ClipSearchError as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(2)
    cli(prog_name="clipsearch", default_map=_param_names(default_map))


def _param_names(default_map: dict) -> dict:
    """Config keys may be flag names (`limit`, `batch-size`); click's default_map wants parameter names."""
    out = {}
    for name, values in default_map.items():
        command = cli.commands.get(name)
        if command is None:
            continue
        alias = {}
        for p in command.params:
            alias[p.name] = p.name
            for opt in getattr(p, "opts", []):
                alias[opt.lstrip("-").replace("-", "_")] = p.name
        out[name] = {alias.get(k, k): v for k, v in values.items() if k in alias}
    return out
