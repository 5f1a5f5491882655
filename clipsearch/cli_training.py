"""Click commands for the training side: shapes, train, eval, inspect.

`register(group)` adds them to clipsearch's CLI group. Nothing heavy (torch, open_clip, PIL) is
imported at module level, so `clipsearch --help` stays instant.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .errors import ClipSearchError, ConfigError


def _fail(e: Exception):
    """Map a clipsearch error to click's exits: bad settings (ConfigError) -> 2, anything else -> 1."""
    if isinstance(e, ConfigError):
        return click.UsageError(str(e))
    return click.ClickException(str(e))


def _quiet_random_init_notices() -> None:
    """train and inspect build models without weights on purpose: drop open_clip's notices about it
    (it logs them through the root logger). Process-wide, so set here, in the CLI."""
    import logging

    from .training.models import RandomInitNotice

    root = logging.getLogger()
    if not any(isinstance(f, RandomInitNotice) for f in root.filters):
        root.addFilter(RandomInitNotice())


def _bar(total=None, desc="", unit="it"):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False)


@click.command("shapes")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--n", "n", type=click.IntRange(min=1), default=1000, show_default=True, help="number of images")
@click.option("--seed", type=int, default=1, show_default=True, help="rendering seed (image i depends only on seed and i)")
@click.option("--prefix", default="shape", show_default=True, help="file name prefix")
@click.option("--progress/--no-progress", default=True, show_default=True)
def shapes_cmd(out_dir: Path, n: int, seed: int, prefix: str, progress: bool):
    """Render N captioned images of the shapes domain into OUT_DIR.

    Writes OUT_DIR/images/*.png|jpg, OUT_DIR/captions.csv (file,caption) and OUT_DIR/scenes.jsonl.
    """
    from .training.shapes import write_dataset

    bar = _bar(n, "render", "img") if progress else None
    try:
        write_dataset(out_dir, n, seed, prefix=prefix, progress=(bar.update if bar else None))
    except OSError as e:
        raise click.ClickException(f"cannot write to {out_dir}: {e}") from e
    finally:
        if bar:
            bar.close()
    click.echo(f"wrote {n} images, captions.csv and scenes.jsonl to {out_dir}")


@click.command("train")
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="checkpoint directory to write (usable as --model OUT)")
@click.option("--arch", default=None, help="train from scratch: an open_clip config JSON file (or an open_clip architecture name)")
@click.option("--model", "model", default=None, help="fine-tune this model (anything --model accepts)")
@click.option("--epochs", type=click.FloatRange(min=0, min_open=True), default=10, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=2), default=256, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, help="peak learning rate [1e-3 from scratch, 1e-5 fine-tuning]")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=0.1, show_default=True)
@click.option("--warmup-steps", type=click.IntRange(min=0), default=100, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--val-fraction", type=click.FloatRange(0, 0.5), default=0.05, show_default=True, help="held-out share, evaluated every epoch")
@click.option("--unfreeze-vision-blocks", type=click.IntRange(min=-1), default=-1, show_default=True,
              help="train only the last N vision blocks (+ final norm and projection); -1 = all")
@click.option("--unfreeze-text-blocks", type=click.IntRange(min=-1), default=-1, show_default=True,
              help="train only the last N text blocks (+ final norm and projection); -1 = all")
@click.option("--new-projection", type=click.IntRange(min=1), default=None, help="replace both projections with new ones to DIM")
@click.option("--freeze-logit-scale", is_flag=True, help="keep the logit scale fixed")
@click.option("--augment", type=click.Choice(["auto", "shapes", "none"]), default="auto", show_default=True,
              help="caption augmentation; auto = shapes augmentation when scenes.jsonl exists")
@click.option("--reduce-vocab/--full-vocab", default=None, help="keep only the tokens of the data's captions [reduce from scratch]")
@click.option("--fp16-weights", is_flag=True, help="store the weights as float16 (half the file size)")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch CPU threads [torch's default]; the same --seed gives the same weights on as many threads")
@click.option("--max-minutes", type=click.FloatRange(min=0, min_open=True), default=None,
              help="time budget: the learning rate follows the clock and training stops (and saves) when it runs "
                   "out; a run it cuts short is not reproducible, even with --seed")
@click.option("--overwrite", is_flag=True,
              help="write into --out even if it holds a checkpoint or other files (replaces the checkpoint; "
                   "libraries indexed with the old weights then refuse queries)")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
def train_cmd(data, out_dir, arch, model, epochs, batch_size, lr, weight_decay, warmup_steps, seed, val_fraction,
              unfreeze_vision_blocks, unfreeze_text_blocks, new_projection, freeze_logit_scale, augment, reduce_vocab,
              fp16_weights, threads, max_minutes, overwrite, as_json):
    """Contrastive image-text training on DATA (a folder with captions.csv: file,caption).

    From scratch with --arch CONFIG.json, or fine-tuning with --model M. Writes a checkpoint
    directory (open_clip_config.json + open_clip_model.safetensors) into --out, which must be new
    or empty unless --overwrite.
    """
    if (arch is None) == (model is None):
        raise click.UsageError("give exactly one of --arch (train from scratch) or --model (fine-tune)")
    from .training.checkpoint import check_out_dir
    from .training.options import TrainOptions
    from .training.train import train_folder

    try:
        check_out_dir(out_dir, overwrite=overwrite)  # fail at once, before any model or image is loaded
    except ClipSearchError as e:
        raise _fail(e) from e
    if threads:
        import torch

        torch.set_num_threads(threads)
    _quiet_random_init_notices()
    opts = TrainOptions(
        epochs=epochs, batch_size=batch_size, lr=lr if lr is not None else (1e-3 if arch else 1e-5),
        weight_decay=weight_decay, warmup_steps=warmup_steps, seed=seed, val_fraction=val_fraction,
        unfreeze_vision_blocks=unfreeze_vision_blocks, unfreeze_text_blocks=unfreeze_text_blocks,
        new_projection=new_projection, freeze_logit_scale=freeze_logit_scale, augment=augment,
        reduce_vocab=reduce_vocab if arch else False, fp16_weights=fp16_weights, max_minutes=max_minutes,
    )
    state = {"bar": None, "load": None}

    def cb(e):
        ev = e["event"]
        if ev == "loading":
            state["load"] = _bar(e["n"], "load", "img")
        elif ev == "loaded":
            state["load"].update(e["k"])
        elif ev == "start":
            if state["load"]:
                state["load"].close()
            state["bar"] = _bar(e["total_steps"], "train", "step")
        elif ev == "step":
            state["bar"].update(1)
            state["bar"].set_postfix(loss=f"{e['loss']:.4f}", scale=f"{e['logit_scale']:.1f}")
        elif ev == "epoch":
            msg = f"epoch {e['epoch']}: train loss {e['train_loss']:.4f}"
            if "val_recall@1" in e:
                msg += f", held-out recall@1 {e['val_recall@1']:.3f}"
            state["bar"].write(msg, file=sys.stderr)

    try:
        summary = train_folder(data, out_dir, arch=arch, model=model, opts=opts, callback=cb, overwrite=overwrite)
    except ClipSearchError as e:
        raise _fail(e) from e
    finally:
        for b in (state["bar"], state["load"]):
            if b is not None:
                b.close()
    summary.pop("losses", None)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        last = summary["history"][-1] if summary["history"] else {}
        click.echo(f"trained {summary['steps']} steps ({summary['epochs']} epochs) in {summary['seconds']:.0f} s: "
                   f"loss {summary['first_loss']:.4f} -> {summary['final_loss']:.4f}"
                   + (f", held-out recall@1 {last['val_recall@1']:.3f}" if "val_recall@1" in last else ""))
        click.echo(f"checkpoint written to {out_dir} (use --model {out_dir})")


@click.command("eval")
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--model", "model", default="shapes", show_default=True, help="model to measure (anything --model accepts)")
@click.option("--json", "as_json", is_flag=True, help="print all figures as JSON")
def eval_cmd(data, model, as_json):
    """Measure retrieval on DATA (captions.csv, plus scenes.jsonl for the shapes measures).

    Text-to-image recall@1/5/10 for full captions; precision@10 for partial descriptions and for
    search by example image (shapes domain, needs scenes.jsonl).
    """
    from .training.evaluate import evaluate

    bar = _bar(None, "embed", "img")
    try:
        res = evaluate(data, model, progress=bar.update)
    except ClipSearchError as e:
        raise _fail(e) from e
    finally:
        bar.close()
    if as_json:
        click.echo(json.dumps(res, indent=2))
        return
    click.echo(f"model {res['model']} on {res['folder']} ({res['n_images']} images, {res['seconds']:.1f} s)")
    click.echo(f"{'measure':<36} {'value':>7}  queries")
    fc = res["full_caption"]
    for k in ("recall@1", "recall@5", "recall@10"):
        click.echo(f"{'full captions ' + k:<36} {fc[k]:>7.3f}  {fc['n_queries']}")
    if "partial" in res:
        p = res["partial"]
        click.echo(f"{'partial descriptions precision@10':<36} {p['precision@10']:>7.3f}  {p['n_queries']}")
        for kind, v in p["by_kind"].items():
            click.echo(f"{'  a ' + kind:<36} {v['precision@10']:>7.3f}  {v['n_queries']}")
    if "example_image" in res:
        x = res["example_image"]
        click.echo(f"{'example image precision@10':<36} {x['precision@10']:>7.3f}  {x['n_queries']}")
    if "partial" in res or "example_image" in res:
        click.echo("precision@10 = relevant in the first 10 / min(10, relevant images); --json also gives undivided figures")


@click.command("inspect")
@click.option("--model", "model", default=None, help="model or bare open_clip architecture name (e.g. ViT-B-32) [the default model]")
@click.option("--json", "as_json", is_flag=True, help="print the description as JSON")
def inspect_cmd(model, as_json):
    """Print a model's architecture and parameter counts per tower (trainable and frozen)."""
    from .training.inspect import describe, format_description

    _quiet_random_init_notices()
    try:
        d = describe(model)
    except ClipSearchError as e:
        raise _fail(e) from e
    click.echo(json.dumps(d, indent=2) if as_json else format_description(d))


COMMANDS = (shapes_cmd, train_cmd, eval_cmd, inspect_cmd)


def register(group: click.Group) -> None:
    """Add shapes, train, eval and inspect to a click group."""
    for cmd in COMMANDS:
        group.add_command(cmd)
