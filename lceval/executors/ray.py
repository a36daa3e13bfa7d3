"""``run.executor: ray``: the grid's work units scored by Ray actors, written by this process alone.

The driver (the ``lceval run`` process) plans the same units as a local run,
(pairing, task, batch of samples of one length), generates every sample once
(the dataset cache) and ships each unit's samples with it. Workers are Ray
actors, each holding its own ``Runner`` over the same resolved config: a model
is loaded once per worker and reused for every unit and pairing it scores.
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
from lceval.executors import Progress
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
    """A Ray actor: a Runner over the driver's resolved config; scores units."""

    def __init__(self, resolved, limit, run_id, threads: int):
        import torch

        from lceval.runner import Runner

        self.runner = Runner(resolved, limit=limit, progress=False)
        self.runner.run_id = run_id
        torch.set_num_threads(max(1, threads))  # after the Runner, which applies run.threads
        self.done = 0

    def score(self, unit) -> list[dict]:
        kill_after = os.environ.get("LCEVAL_TEST_KILL_WORKER_AFTER")  # tests: this worker dies mid-run, once
        if kill_after and self.done >= int(kill_after):
            marker = os.environ["LCEVAL_TEST_KILL_MARKER"]
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.close(fd)
                os._exit(1)
            except FileExistsError:
                pass
        rows = self.runner.score_unit(unit)
        self.done += 1
        return rows


def run_on_ray(runner, store, bar, summary) -> None:
    """Score every pending unit of ``runner``'s grid on Ray actors; append rows to ``store`` as units finish."""
    ray = _ray()
    spec = runner.r.config.run.ray
    started_here, reaper = False, None
    if not ray.is_initialized():
        if spec.address == "local":  # workers inherit this process's environment ($LCEVAL_CACHE included)
            reaper = reaping.start()  # kills what is left of the instance if this process is killed
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        else:
            try:
                ray.init(address=spec.address, include_dashboard=False, log_to_driver=False)
            except ConnectionError as exc:
                raise ConfigError("run.ray.address", f"no Ray cluster answers at {spec.address!r} ({exc}); start "
                                  "one with `ray start --head`, or use address: local") from None
        started_here = True
    try:
        units = [u for p in runner.r.pairings for u in runner.plan(p, store)]
        if not units:
            return
        resources = ray.cluster_resources()
        check_resources(spec, resources)
        by_cpu = int(resources.get("CPU", 1) // spec.num_cpus_per_worker)
        by_gpu = int(resources.get("GPU", 0) // spec.num_gpus_per_worker) if spec.num_gpus_per_worker else by_cpu
        n = max(1, min(spec.max_workers or by_cpu, by_cpu, by_gpu, len(units)))
        actor = ray.remote(num_cpus=spec.num_cpus_per_worker, num_gpus=spec.num_gpus_per_worker,
                           max_restarts=spec.max_retries, max_task_retries=spec.max_retries)(Worker)
        threads = max(1, int(spec.num_cpus_per_worker))
        workers = [actor.remote(runner.r, runner.limit, runner.run_id, threads) for _ in range(n)]
        queue = list(reversed(units))
        in_flight: dict = {}  # object ref -> (worker, unit)
        idle = list(workers)
        progress = Progress(store, bar, summary)
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
                progress.done(unit, rows, f"ray: {len(in_flight)}/{n} workers busy,")
                idle.append(w)
    finally:
        if started_here:
            ray.shutdown()
        if reaper is not None:
            reaping.finish(reaper)


def check_resources(spec, resources: dict) -> None:
    """A worker the cluster can never place would wait forever: refuse it with the numbers instead."""
    for key, want in (("GPU", spec.num_gpus_per_worker), ("CPU", spec.num_cpus_per_worker)):
        have = resources.get(key, 0)
        if want and want > have:
            name = f"num_{key.lower()}s_per_worker"
            raise ConfigError(f"run.ray.{name}", f"each worker asks for {want:g} {key}(s) but the Ray cluster has "
                              f"{have:g}; lower {name}" + (" to 0 or add GPU nodes" if key == "GPU" else ""))
