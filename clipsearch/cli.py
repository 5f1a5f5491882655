"""The command line: the only module that prints, exits or reads the environment."""

from __future__ import annotations

import functools
import json
import os
import sys

import click

from .cli_logging import configure_logging
from .encoders import DEFAULT_MODEL
from .errors import ClipSearchError

MODEL_HELP = ("ARCH:PRETRAINED as open_clip names it (fetched into the Hugging Face cache), ARCH:/path/to/weights, "
              "a checkpoint directory from `clipsearch train`, or `shapes` (the offline demo model). "
              "Only needed when creating a library: a library remembers its model.")


def _verbose(ctx, param, value):
    if value:
        configure_logging(True)


verbose_option = click.option("-v", "--verbose", is_flag=True, expose_value=False, callback=_verbose,
                              help="Show what open_clip and huggingface_hub log (downloads, retries, warnings).")


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


class _Group(click.Group):
    """Ctrl-C outside a command's body (while click parses the arguments, in the group's own callback) exits
    130 like Ctrl-C inside it (handle_errors), not click's "Aborted!" with status 1."""

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except KeyboardInterrupt:
            _interrupted()

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            _interrupted()


def _interrupted():
    click.echo("\nInterrupted.", err=True)
    raise click.exceptions.Exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="clipsearch")
@click.option("-v", "--verbose", is_flag=True, help="Show what open_clip and huggingface_hub log.")
def cli(verbose):
    """Semantic image search: index folders of photos, then search them by text or by example image."""
    configure_logging(verbose)


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True, file_okay=False, path_type=str))
@library_option
@click.option("--model", default=None, envvar="CLIPSEARCH_MODEL",
              help=f"{MODEL_HELP} A new library's default: {DEFAULT_MODEL}.")
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
@verbose_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@handle_errors
def index(paths, library, model, batch_size, workers, device, precision, max_megapixels, follow_symlinks,
          allow_truncated, quiet, as_json):
    """Index folders of images (all known folders when none is given).

    Incremental: unchanged files are not read again, changed files are re-embedded, deleted files
    leave the results, and renamed or copied files reuse their vectors.
    """
    from tqdm import tqdm

    from .cli_interrupts import HeldInterrupts

    with HeldInterrupts(terminated=Terminated) as interrupts, \
            open_library(library, model=model, create=True, batch_size=batch_size, workers=workers, device=device,
                         precision=precision, max_pixels=int(max_megapixels * 1e6),
                         follow_symlinks=follow_symlinks, allow_truncated=allow_truncated) as lib:
        bar = tqdm(total=0, unit="img", desc="indexing", disable=quiet, file=sys.stderr, dynamic_ncols=True)

        def progress(kind: str, n: int) -> None:
            if kind == "found":
                bar.total += n
                bar.refresh()
            elif kind == "loading-model":  # once: the first file whose content is new
                if not quiet:
                    from .encoders import parse_model_spec

                    try:
                        remote = parse_model_spec(lib.model_name).kind in ("pretrained", "hf-hub")
                    except ClipSearchError:  # the load itself says what is wrong
                        remote = False
                    bar.write(f"loading model {lib.model_name}" + (" (first use may download it)" if remote else ""),
                              file=sys.stderr)
            else:
                bar.update(n)
            interrupts.checkpoint()

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


def _epoch(value: str | None, flag: str) -> float | None:
    """An ISO date or date-time (2024-05-01, 2024-05-01T18:30, ...+02:00) as seconds since the epoch; a date
    without a time zone is local time, a date alone its midnight."""
    if value is None:
        return None
    import datetime

    try:
        return datetime.datetime.fromisoformat(value.strip()).timestamp()
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO date such as 2024-05-01 or 2024-05-01T18:30",
                                 param_hint=flag) from None


def _like_value(value: str) -> int | str:
    """An embedding id (digits that are not a file here) or the path of an indexed image."""
    if value.isdigit() and not os.path.exists(value):
        return int(value)
    return os.path.abspath(os.path.expanduser(value))


def _range(low, high, what: str, flags: str) -> None:
    if low is not None and high is not None and low >= high:
        raise click.UsageError(f"{flags}: the {what} range is empty (the first bound must be below the second)")


def build_query(text, and_texts, not_texts, images, not_images, likes, unlikes, *, k, min_score, cutoff, sort,
                include_self, templates, no_templates, folder, path_glob, modified_after, modified_before,
                taken_after, taken_before, min_width, min_height, min_megapixels, max_megapixels, formats):
    """The Query a `clipsearch query` command line means, or a click usage error (exit status 2)."""
    from .query import Filters, Query, Term, parse_terms, split_weight

    if k < 1:
        raise click.BadParameter(f"k must be at least 1, not {k}", param_hint="-k/--limit")
    if text is None and not (and_texts or not_texts or images or not_images or likes or unlikes):
        raise click.UsageError("give something to search for: a query TEXT, --image PATH or --like ID|PATH")
    if templates and no_templates:
        raise click.UsageError("--template and --no-templates contradict each other: give one of them")
    _range(min_megapixels, max_megapixels, "megapixel", "--min-megapixels/--max-megapixels")
    dates = {f: _epoch(v, f) for f, v in (("--modified-after", modified_after), ("--modified-before", modified_before),
                                         ("--taken-after", taken_after), ("--taken-before", taken_before))}
    _range(dates["--modified-after"], dates["--modified-before"], "date", "--modified-after/--modified-before")
    _range(dates["--taken-after"], dates["--taken-before"], "date", "--taken-after/--taken-before")
    try:
        terms = list(parse_terms(text)) if text is not None else []
        for sign, values in ((1, and_texts), (-1, not_texts)):
            for value in values:
                words, weight = split_weight(value)
                terms.append(Term.text(words, sign * weight))
        terms += [Term.image(os.path.expanduser(p)) for p in images]
        terms += [Term.image(os.path.expanduser(p), -1.0) for p in not_images]
        terms += [Term.like(_like_value(v)) for v in likes]
        terms += [Term.like(_like_value(v), -1.0) for v in unlikes]
        filters = Filters(
            folder=os.path.abspath(os.path.expanduser(folder)) if folder else None, path_glob=path_glob,
            modified_after=dates["--modified-after"], modified_before=dates["--modified-before"],
            taken_after=dates["--taken-after"], taken_before=dates["--taken-before"],
            min_width=min_width, min_height=min_height, min_megapixels=min_megapixels, max_megapixels=max_megapixels,
            formats=tuple(dict.fromkeys(_FORMAT_ALIASES.get(f.lower(), f.lower()) for f in formats)))
        options = {"k": k, "min_score": min_score, "sort": sort, "include_self": include_self, "filters": filters}
        if cutoff is not None:
            options["cutoff"] = cutoff
        if templates or no_templates:
            options["templates"] = tuple(templates)
        return Query(terms=tuple(terms), **options).validate()
    except ClipSearchError as e:
        raise click.UsageError(str(e)) from None


_FORMAT_ALIASES = {"jpg": "jpeg", "jpe": "jpeg", "tif": "tiff"}


def _nothing_found(query) -> str:
    from .search import effective_cutoff

    if query.filters.active:
        return "no image passes the filters (or none of those matches well enough)"
    if query.min_score is not None or effective_cutoff(query) != "none":
        hint = "lower --min-score" if query.min_score is not None else "--cutoff none"
        return f"no image matches well enough (try {hint} to see the closest ones)"
    return "no image matches"


@cli.command()
@click.argument("text", required=False)
@click.option("--and", "and_texts", multiple=True, metavar="TEXT",
              help="Also look for this text (repeatable; `WEIGHT:words` weighs it).")
@click.option("--not", "not_texts", multiple=True, metavar="TEXT",
              help="Move away from this text (repeatable; `WEIGHT:words` weighs it).")
@click.option("--image", "images", multiple=True, metavar="PATH",
              help="An example image file (repeatable); one whose content is indexed is not embedded again.")
@click.option("--not-image", "not_images", multiple=True, metavar="PATH", help="Move away from this image file.")
@click.option("--like", "likes", multiple=True, metavar="ID|PATH",
              help="More like this indexed image (its id or path): its stored vector, no model loaded.")
@click.option("--unlike", "unlikes", multiple=True, metavar="ID|PATH", help="Less like this indexed image.")
@click.option("--include-self", is_flag=True,
              help="Keep the example images (--image, --like) themselves in the results.")
@click.option("--template", "templates", multiple=True, metavar="T",
              help='A prompt template for the text terms, "{}" standing for the words (repeatable: averaged). '
                   'Default: none (they did not help on the demo evaluation; see the README).')
@click.option("--no-templates", is_flag=True, help="Embed the texts as they are (the default).")
@click.option("--folder", default=None, metavar="DIR", help="Only images under this folder.")
@click.option("--path-glob", default=None, metavar="GLOB", help="Only images whose full path matches this shell glob.")
@click.option("--modified-after", default=None, metavar="DATE", help="File modified at or after this ISO date.")
@click.option("--modified-before", default=None, metavar="DATE", help="File modified before this ISO date.")
@click.option("--taken-after", default=None, metavar="DATE", help="Photo taken (EXIF date) at or after this ISO date.")
@click.option("--taken-before", default=None, metavar="DATE", help="Photo taken (EXIF date) before this ISO date.")
@click.option("--min-width", type=click.IntRange(1), default=None, help="At least this many pixels wide.")
@click.option("--min-height", type=click.IntRange(1), default=None, help="At least this many pixels high.")
@click.option("--min-megapixels", type=click.FloatRange(0, min_open=True), default=None)
@click.option("--max-megapixels", type=click.FloatRange(0, min_open=True), default=None)
@click.option("--format", "formats", multiple=True, metavar="FMT", help="Only this file format: jpeg, png, ... (repeatable).")
@click.option("--sort", default="score", show_default=True, type=click.Choice(["score", "date", "path"]),
              help="Order of the results that passed the cut-off.")
@click.option("--cutoff", default=None, type=click.Choice(["auto", "none"]),
              help="auto: keep only results that stand out from this query's own scores over the library.")
@click.option("--min-score", type=float, default=None, help="Leave out results whose cosine score is lower.")
@click.option("-k", "--limit", "k", default=10, show_default=True, type=int, help="How many results.")
@library_option
@click.option("--model", default=None, envvar="CLIPSEARCH_MODEL", help="Must be the library's own model, if given.")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--precision", default="auto", show_default=True, type=click.Choice(["auto", "fp32", "bf16", "fp16"]))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of {rank, score, path, id, ...}.")
@click.option("-0", "--null", "null", is_flag=True,
              help="Print only the paths, each ended by a NUL byte (for xargs -0: any file name is unambiguous).")
@click.option("--collapse", is_flag=True, help="Show one image per 'same picture' group (see `clipsearch duplicates`).")
@verbose_option
@handle_errors
def query(text, and_texts, not_texts, images, not_images, likes, unlikes, include_self, templates, no_templates,
          folder, path_glob, modified_after, modified_before, taken_after, taken_before, min_width, min_height,
          min_megapixels, max_megapixels, formats, sort, cutoff, min_score, k, library, model, device, precision,
          as_json, null, collapse):
    """Search the library: by TEXT, example images and indexed images, steered with --and/--not; prints
    rank, score (cosine) and path.

    TEXT may join terms with ` + ` and ` - `, each optionally weighted as `WEIGHT:words`.

    \b
    Examples:
      clipsearch query "a dog" --and "on a beach" --not "at night"
      clipsearch query "2:a dog + on a beach - 0.5:at night"
      clipsearch query --like ~/Photos/cat.jpg --unlike ~/Photos/dog.jpg
    """
    if as_json and null:
        raise click.UsageError("--json and -0 are two output formats: give one of them")
    q = build_query(text, and_texts, not_texts, images, not_images, likes, unlikes, k=k, min_score=min_score,
                    cutoff=cutoff, sort=sort, include_self=include_self, templates=templates,
                    no_templates=no_templates, folder=folder, path_glob=path_glob, modified_after=modified_after,
                    modified_before=modified_before, taken_after=taken_after, taken_before=taken_before,
                    min_width=min_width, min_height=min_height, min_megapixels=min_megapixels,
                    max_megapixels=max_megapixels, formats=formats)
    with open_library(library, model=model, create=False, device=device, precision=precision) as lib:
        results = lib.search(q)
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
    if not results:
        click.echo(_nothing_found(q), err=True)
        return
    for r, off in zip(results, offline):
        mark = "  (offline)" if off else ""
        if q.sort == "date":  # when the photo was taken (else the file's modification time, marked "file")
            when = r.taken or (f"{r.modified[:19]} file" if r.modified else "-")
            echo_bytes(f"{r.rank:>3}  {r.score:.4f}  {when.replace('T', ' ')[:24]:<24}  {r.path}{mark}")
        else:
            echo_bytes(f"{r.rank:>3}  {r.score:.4f}  {r.path}{mark}")


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
    __import__(f"{__package__}.cli_serve").cli_serve.register(cli)  # `clipsearch serve`: the web page
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
    from .config import config_path, load_default_map, param_names, unknown_settings

    _crashpoints.configure(os.environ)  # test-only crash points; off unless CLIPSEARCH_CRASH_* is set

    try:
        default_map = load_default_map(config_path(dict(os.environ)))
    except ClipSearchError as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(2)
    for line in unknown_settings(cli, config_path(dict(os.environ))):
        click.echo(f"Warning: {line}", err=True)
    cli(prog_name="clipsearch", default_map=param_names(cli, default_map))
