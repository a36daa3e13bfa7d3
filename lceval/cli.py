"""The ``lceval`` command line.

User errors print one line (``error: ...``) and exit with code 2; a run whose
cells failed exits with code 1; success is 0.
"""

from __future__ import annotations

import functools
import signal
import sys
import threading
from pathlib import Path

import click

from lceval.errors import UserError


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is (rows kept, a resume hint), exiting 143."""


def _terminate(signum, frame):
    raise Terminated()


def _interrupted(exc: KeyboardInterrupt, where: str = "") -> None:
    how, code = ("terminated (SIGTERM)", 143) if isinstance(exc, Terminated) else ("interrupted", 130)
    click.echo(f"\n{how}: rows written so far are kept{where}; run the same command again to resume", err=True)
    sys.exit(code)


def user_errors(fn):
    """One line and exit 2 for a user's error (an OSError too: it names the path and the reason);
    Ctrl-C at any moment exits 130 with what was kept; SIGTERM the same way with 143."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except OSError as exc:
            from lceval.store import os_reason

            where = exc.filename or "a file"
            click.echo(f"error: cannot use {where}: {os_reason(exc)}; rows already written are kept", err=True)
            sys.exit(2)
        except KeyboardInterrupt as exc:
            _interrupted(exc)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lceval")
def main():
    """lceval: where in a long input can a model still find what it needs?"""
    if hasattr(signal, "SIGXFSZ"):  # a file-size limit becomes an OSError (EFBIG) with a clear message, not a kill
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    if threading.current_thread() is threading.main_thread():  # SIGTERM ends a run as Ctrl-C does
        signal.signal(signal.SIGTERM, _terminate)


@main.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="Run directory (default runs/<run.name>).")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="Override a config value, e.g. --set tasks.niah.samples=2 (repeatable).")
@click.option("--dry-run", is_flag=True, help="Print the grid size and token estimate; run nothing.")
@click.option("--limit", type=int, help="At most N samples per grid cell (N >= 1).")
@click.option("--lengths", "only", metavar="N[,N...]",
              help="Only these context lengths of the config's tasks and pairings, e.g. --lengths 1024 (a quick look).")
@click.option("--retry-failed", is_flag=True,
              help="Score again the rows whose status is error, oom or nonfinite (the new rows supersede them).")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@user_errors
def run(config, out, overrides, dry_run, limit, only, retry_failed, no_progress):
    """Run the grid in CONFIG and write the report."""
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1 (got {limit}); omit it to run every sample")
    lengths = None
    if only is not None:
        try:
            lengths = [int(x) for x in only.split(",")]
        except ValueError:
            raise UserError(f"--lengths {only!r}: expected whole numbers separated by commas, e.g. "
                            "--lengths 1024,2048") from None
    from lceval.executors import executor_for
    from lceval.report import build_report
    from lceval.resolve import load_config
    from lceval.runner import Runner

    resolved = load_config(config, overrides, lengths)
    runner = Runner(resolved, limit=limit, progress=not no_progress, retry_failed=retry_failed)
    out = out or Path("runs") / resolved.config.run.name
    runner.preflight()  # what a run would refuse at start is refused now, before anything is written
    if dry_run:
        n_cells = sum(len(t.cells()) for t in runner.tasks.values())
        click.echo(f"pairings: {len(resolved.pairings)} ({', '.join(p.label for p in resolved.pairings)})")
        click.echo(f"tasks: {len(resolved.tasks)} ({', '.join(resolved.tasks)}), cells: {n_cells}")
        click.echo(f"samples to score: {runner.grid_size():,}")
        click.echo(f"prompt tokens to process: {runner.estimate_tokens():,}")
        click.echo(f"run directory: {out}")
        return
    try:
        # the report is built under the run's lock, its figures drawn by as many processes as run.threads allows
        summary = runner.run(out, executor_for(resolved.config.run), after=lambda d: build_report(d, workers="auto"))
    except KeyboardInterrupt as exc:
        _interrupted(exc, f" in {out}")
    report = summary.report
    counts = ", ".join(f"{k}={v}" for k, v in sorted(summary.status_counts.items()))
    if summary.written == 0 and summary.skipped_done:
        click.echo(f"the run in {out} is complete ({summary.total} rows); nothing to do. The report was rebuilt.")
    else:
        click.echo(f"rows written this time: {summary.written} (already done: {summary.skipped_done}); "
                   f"statuses: {counts}")
    click.echo(f"results: {out / 'results.jsonl'}")
    click.echo(f"report: {report}")
    click.echo(f"html: {report.parent / 'report.html'}")
    if summary.failed:
        click.echo(f"error: {summary.failed} samples failed (see the status and message columns)", err=True)
        sys.exit(1)


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--threshold", type=click.FloatRange(0, 100, min_open=True),
              help="Percent accuracy for the effective length (default: the run's report.threshold).")
@user_errors
def report(run_dir, threshold):
    """Rebuild the report of RUN_DIR from its stored results (offline)."""
    from lceval.report import build_report

    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory; pass the --out directory of an lceval run")
    path = build_report(run_dir, threshold=threshold, workers="auto", warn=lambda line: click.echo(line, err=True))
    click.echo(f"report: {path}")


@main.command(name="list")
@user_errors
def list_plugins():
    """List registered tasks, models, attention variants and position encodings."""
    from lceval.registry import REGISTRIES

    for kind, reg in REGISTRIES.items():
        click.echo(f"{kind}: {', '.join(reg.names())}")


@main.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path),
              help="Checkpoint directory, relative to the current directory (default: the recipe's 'out', "
                   "relative to the recipe's folder).")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="Override a recipe value.")
@click.option("--force", is_flag=True, help="Replace an existing checkpoint at the output directory.")
@click.option("--no-progress", is_flag=True)
@user_errors
def train(config, out, overrides, force, no_progress):
    """Train a reference model from a recipe YAML (keys of TrainRecipe, plus 'out').

    Paths inside a YAML file are relative to that file's folder (as a run config's
    'checkpoint' is); paths on the command line are relative to the current directory.
    """
    from lceval.config import TrainRecipe, validate
    from lceval.models.checkpoint import is_complete
    from lceval.resolve import apply_overrides, check_recipe, read_yaml
    from lceval.train import train as do_train

    data = apply_overrides(read_yaml(config), list(overrides))
    in_file = data.pop("out", None)
    target = out if out is not None else ((Path(config).resolve().parent / str(in_file)).resolve() if in_file else None)
    if target is None:
        raise UserError("no output directory: pass --out DIR or set 'out' in the recipe")
    if is_complete(target) and not force:
        raise UserError(f"{target} already holds a checkpoint; pass --force to replace it, or another --out")
    recipe = validate(TrainRecipe, data, "")
    check_recipe(recipe, "train")
    from lceval.runner import use_threads

    use_threads("auto")
    card = do_train(recipe, Path(target), progress=not no_progress)
    click.echo(f"trained in {card['train_seconds']} s; measured: {card['measured']}")
    click.echo(f"checkpoint: {target}")


if __name__ == "__main__":
    main()
