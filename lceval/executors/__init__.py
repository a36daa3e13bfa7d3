"""Where a grid's work units run. The results store always has one writer: the ``lceval run`` process.

* ``local`` (``lceval.executors.local``): this process, pairing by pairing;
* ``ray`` (``lceval.executors.ray``): Ray actors, rows streamed back to this process.

Both take the units ``Runner.plan`` makes and score them with ``Runner.score_unit``.
"""


class Progress:
    """Appends a unit's rows to the store and advances the run's bar (samples, tokens/s, a note)."""

    def __init__(self, store, bar, summary):
        import time

        self.store, self.bar, self.summary = store, bar, summary
        self.clock = time.perf_counter
        self.tokens, self.t0 = 0, self.clock()

    def done(self, unit, rows: list[dict], note: str) -> None:
        self.store.append(rows)
        self.summary.written += len(rows)
        self.tokens += len(unit.batch[0].input_ids) * len(unit.batch)
        self.bar.update(len(unit.batch))
        rate = self.tokens / max(self.clock() - self.t0, 1e-9)
        self.bar.set_postfix_str(f"{note} tok/s={rate:,.0f}")
