"""``run.executor: local``: every unit scored in this process, pairing by pairing."""

from __future__ import annotations

import time


def run_local(runner, store, bar, summary) -> None:
    for pairing in runner.r.pairings:
        tokens_done, started = 0, time.perf_counter()
        for unit in runner.plan(pairing, store):
            rows = runner.score_unit(unit)
            store.append(rows)
            summary.written += len(rows)
            tokens_done += len(unit.batch[0].input_ids) * len(unit.batch)
            bar.update(len(unit.batch))
            rate = tokens_done / max(time.perf_counter() - started, 1e-9)
            bar.set_postfix_str(f"{pairing.label} tok/s={rate:,.0f}")
