"""``run.executor: local``: every unit scored in this process, pairing by pairing."""

from __future__ import annotations

from lceval.executors import Progress


def run_local(runner, store, bar, summary) -> None:
    for pairing in runner.r.pairings:
        progress = Progress(store, bar, summary)  # tok/s per pairing
        for unit in runner.plan(pairing, store):
            progress.done(unit, runner.score_unit(unit), pairing.label)
