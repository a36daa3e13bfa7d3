"""``run.executor: ray``: the grid's work units scored by Ray actors, written by this process alone.

The driver (the ``lceval run`` process) plans the same units as a local run,
(pairing, task, batch of samples of one length), generates every sample once
(the dataset cache) and ships each unit's samples with it. Workers are Ray
actors, each holding the driver's ``score_unit`` (a ``runner.Scorer``: the
resolved config, from which it builds its own Runner): a model is loaded once
per worker and reused for every unit and pairing it scores.
Rows come back as units finish and the driver appends them to the results
store with the usual fsync and lock, so kill -9 of the driver followed by the
same command loses and duplicates nothing. An actor that dies is restarted
and its unit retried (``run.ray.max_retries``); a unit's rows are written once,
when its result arrives, and rows are keyed, so a retry cannot duplicate them.

What travels to workers: the resolved config (small), the samples of each
unit, and (for ``address: local``) nothing else. On a cluster, workers need
lceval installed and the models' files at the same paths (a shared file
system or the same image); a reference model is trained, if needed, by the
driver before any unit is sent, into ``$LCEVAL_CACHE``, which must then be
shared too.
"""

from __future__ import annotations

import os

from lceval.errors import ConfigError, UserError
from lceval.executors import reaper as reaping


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("run.executor", "ray is not installed; install the extra with pip install -e '.[ray]' "
                          "(or pip install 'lceval[ray]'), or use executor: local") from None
    return ray


def check_available() -> None:
    _ray()


class Worker:
    """A Ray actor: scores units with the driver's ``score_unit`` (which builds its own Runner here)."""

    def __init__(self, score_unit, threads: int):
        import torch

        self.score_unit = score_unit
        getattr(score_unit, "prepare", lambda: None)()  # load the config's Runner now, then take our threads
        torch.set_num_threads(max(1, threads))

    def score(self, unit) -> list:
        return self.score_unit(unit)


class RayExecutor:
    """``executor(units, score_unit, sink)`` on Ray actors, from the ``run.ray`` settings only."""

    def __init__(self, spec):
        _ray()
        self.spec = spec

    def __call__(self, units, score_unit, sink) -> None:
        ray, spec = _ray(), self.spec
        if not units:
            return
        started_here, reaper = False, None
        if not ray.is_initialized():
            if spec.address == "local":  # workers inherit this process's environment ($LCEVAL_CACHE included)
                reaper = reaping.start()  # kills what is left of the instance if this process is killed
                ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
            else:
                try:
                    ray.init(address=spec.address, include_dashboard=False, log_to_driver=False)
                except ConnectionError as exc:
                    raise ConfigError("run.ray.address", f"no Ray cluster answers at {spec.address!r} ({exc}); "
                                      "start one with `ray start --head`, or use address: local") from None
            started_here = True
        try:
            self._score_all(ray, units, score_unit, sink)
        finally:
            if started_here:
                ray.shutdown()
            if reaper is not None:
                reaping.finish(reaper)

    def _score_all(self, ray, units, score_unit, sink) -> None:
        spec = self.spec
        resources = ray.cluster_resources()
        check_resources(spec, resources)
        by_cpu = int(resources.get("CPU", 1) // spec.num_cpus_per_worker)
        by_gpu = int(resources.get("GPU", 0) // spec.num_gpus_per_worker) if spec.num_gpus_per_worker else by_cpu
        n = max(1, min(spec.max_workers or by_cpu, by_cpu, by_gpu, len(units)))
        actor = ray.remote(num_cpus=spec.num_cpus_per_worker, num_gpus=spec.num_gpus_per_worker,
                           max_restarts=spec.max_retries, max_task_retries=spec.max_retries)(Worker)
        threads = max(1, int(spec.num_cpus_per_worker))
        workers = [actor.remote(score_unit, threads) for _ in range(n)]
        queue = list(reversed(units))
        in_flight: dict = {}  # object ref -> (worker, unit)
        idle = list(workers)
        while queue or in_flight:
            while queue and idle:
                w = idle.pop()
                unit = queue.pop()
                in_flight[w.score.remote(unit)] = (w, unit)
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                w, unit = in_flight.pop(ref)
                try:
                    rows = ray.get(ref)
                except ray.exceptions.RayActorError as exc:
                    raise UserError(f"a Ray worker died {spec.max_retries + 1} times on {unit.pairing.label}/"
                                    f"{unit.task} ({type(exc).__name__}); the rows written so far are kept: fix the "
                                    "cause (memory?) and run the same command to resume") from None
                sink(unit, rows, f"ray: {len(in_flight)}/{n} workers busy,")
                idle.append(w)


def check_resources(spec, resources: dict) -> None:
    """A worker the cluster can never place would wait forever: refuse it with the numbers instead."""
    for key, want in (("GPU", spec.num_gpus_per_worker), ("CPU", spec.num_cpus_per_worker)):
        have = resources.get(key, 0)
        if want and want > have:
            name = f"num_{key.lower()}s_per_worker"
            raise ConfigError(f"run.ray.{name}", f"each worker asks for {want:g} {key}(s) but the Ray cluster has "
                              f"{have:g}; lower {name}" + (" to 0 or add GPU nodes" if key == "GPU" else ""))
