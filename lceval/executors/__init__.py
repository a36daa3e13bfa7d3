"""Where a grid's work units run. The results store always has one writer: the ``lceval run`` process.

An executor is a callable ``executor(units, score_unit, sink)``: it scores every unit (``score_unit(unit)``
returns its rows; it can be shipped to another process) and hands each unit's rows to ``sink(unit, rows,
note)`` in this process, which appends them to the store. Executors never read the runner or its config;
the CLI picks one from ``EXECUTORS`` by ``run.executor``:

* ``local`` (``lceval.executors.local``): this process, unit by unit;
* ``ray`` (``lceval.executors.ray``): Ray actors, rows streamed back to this process.
"""


def _local(run_spec):
    from lceval.executors.local import run_local

    return run_local


def _ray(run_spec):
    from lceval.executors.ray import RayExecutor

    return RayExecutor(run_spec.ray)


#: ``run.executor`` -> a factory taking the ``run`` settings
EXECUTORS = {"local": _local, "ray": _ray}


def executor_for(run_spec):
    """The executor ``run.executor`` names, set up with its own settings (``run.ray``)."""
    return EXECUTORS[run_spec.executor](run_spec)


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
