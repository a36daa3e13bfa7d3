"""run.executor: ray on a local Ray instance: the same rows and cells as a local run, a worker killed mid-run,
and kill -9 of the driver followed by a resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pandas as pd
import pytest
from click.testing import CliRunner

ray = pytest.importorskip("ray")

from conftest import small_config  # noqa: E402
from lceval.cli import main  # noqa: E402
from lceval.store import read_rows  # noqa: E402


def run_cli(args):
    return CliRunner().invoke(main, ["run", *map(str, args), "--no-progress"])


def rows_of(out):
    """Rows as comparable dicts (every field: rows carry no timing)."""
    return sorted(json.dumps(r, sort_keys=True) for r in read_rows(out))


def on_disk_keys(out):
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines() if x.strip()]
    return Counter((r["pairing"], r["task"], r["sample_id"]) for r in lines if "sample_id" in r)


def configs(checkpoint, write_config, **ray_spec):
    data = small_config(checkpoint)
    data["run"]["batch_size"] = 2
    data["tasks"]["niah"] = {"lengths": [64, 128], "depths": [0.0, 0.5, 1.0], "samples": 4}
    local = write_config(data, "local.yaml")
    data["run"]["executor"] = "ray"
    data["run"]["ray"] = {"address": "local", "max_workers": 2, **ray_spec}
    return local, write_config(data, "ray.yaml")


@pytest.fixture(scope="module")
def local_run(quickstart_rotary, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("local")

    def write(data, name):
        import yaml

        (tmp / name).write_text(yaml.safe_dump(data))
        return tmp / name

    local, _ = configs(quickstart_rotary, write)
    assert run_cli([local, "--out", tmp / "out"]).exit_code == 0
    return tmp / "out"


def test_ray_rows_and_cells_equal_local(quickstart_rotary, write_config, tmp_path, local_run):
    _, cfg = configs(quickstart_rotary, write_config)
    res = run_cli([cfg, "--out", tmp_path / "ray"])
    assert res.exit_code == 0, res.output
    assert rows_of(tmp_path / "ray") == rows_of(local_run)  # run ids included: where a run ran is not its identity
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "ray" / "report" / "cells.csv"),
                                  pd.read_csv(local_run / "report" / "cells.csv"))


class DyingScorer:
    """A test's score_unit: the worker that holds it exits (os._exit) before its third unit, once per run
    (the marker file says it already happened). Pickled by value, so Ray workers need not import this file."""

    def __init__(self, inner, marker: str, after: int = 2):
        self.inner, self.marker, self.after, self.done = inner, marker, after, 0

    def prepare(self):
        self.inner.prepare()

    def __call__(self, unit):
        if self.done >= self.after:
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                os._exit(1)
            except FileExistsError:
                pass
        self.done += 1
        return self.inner(unit)


@pytest.fixture
def dying_workers(tmp_path, monkeypatch):
    """Every Ray worker of the next run scores through a DyingScorer; yields the marker a death leaves."""
    import lceval.runner

    marker = tmp_path / "killed-once"
    real = lceval.runner.Scorer
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    monkeypatch.setattr(lceval.runner, "Scorer", lambda runner: DyingScorer(real(runner), str(marker)))
    yield marker
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_a_worker_killed_mid_run_is_retried_without_duplicates(quickstart_rotary, write_config, tmp_path, local_run,
                                                               dying_workers):
    _, cfg = configs(quickstart_rotary, write_config)
    res = run_cli([cfg, "--out", tmp_path / "ray"])
    assert res.exit_code == 0, res.output
    assert dying_workers.exists()  # a worker really died
    keys = on_disk_keys(tmp_path / "ray")
    assert set(keys.values()) == {1} and len(keys) == 2 * 2 * 3 * 4
    assert rows_of(tmp_path / "ray") == rows_of(local_run)


def driver_with_rows(cfg, out, rows: int) -> subprocess.Popen:
    """An `lceval run` driver in its own session, returned once it has written ``rows`` lines (or ended)."""
    cmd = [sys.executable, "-m", "lceval.cli", "run", str(cfg), "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    results = out / "results.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if results.exists() and len(results.read_bytes().splitlines()) >= rows:
            break
        time.sleep(0.02)
    return proc


def test_driver_kill_9_then_resume_is_exact(quickstart_rotary, write_config, tmp_path, local_run):
    _, cfg = configs(quickstart_rotary, write_config, max_workers=1)
    out = tmp_path / "ray"
    proc = driver_with_rows(cfg, out, 6)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray instance it started
    proc.wait()
    partial = len(read_rows(out))
    assert 0 < partial < 48, partial
    res = run_cli([cfg, "--out", out])
    assert res.exit_code == 0, res.output
    assert f"already done: {partial}" in res.output
    keys = on_disk_keys(out)
    assert set(keys.values()) == {1} and len(keys) == 48
    assert rows_of(out) == rows_of(local_run)
    pd.testing.assert_frame_equal(pd.read_csv(out / "report" / "cells.csv"),
                                  pd.read_csv(local_run / "report" / "cells.csv"))


def test_missing_ray_is_a_clear_error(quickstart_rotary, write_config, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails, as where it is not installed
    _, cfg = configs(quickstart_rotary, write_config)
    res = run_cli([cfg, "--out", tmp_path / "r"])
    assert res.exit_code == 2 and "pip install -e '.[ray]'" in res.output and "run.executor" in res.output
    assert not (tmp_path / "r").exists()


def test_a_worker_the_cluster_cannot_place_is_refused_not_waited_for(quickstart_rotary, write_config, tmp_path):
    """num_gpus_per_worker: 1 on a machine without GPUs used to wait forever with no output."""
    if ray.is_initialized():
        ray.shutdown()
    _, cfg = configs(quickstart_rotary, write_config, num_gpus_per_worker=1 if not _gpus() else 10**3)
    start = time.time()
    res = run_cli([cfg, "--out", tmp_path / "r"])
    assert res.exit_code == 2 and "error: run.ray.num_gpus_per_worker: each worker asks for" in res.stderr, res.output
    assert "GPU" in res.stderr and len(res.stderr.strip().splitlines()) == 1 and time.time() - start < 120


def _gpus() -> int:
    import torch

    return torch.cuda.device_count()


def test_no_cluster_at_auto_is_a_config_error(quickstart_rotary, write_config, tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if ray.is_initialized():
        ray.shutdown()
    _, cfg = configs(quickstart_rotary, write_config)
    cfg.write_text(cfg.read_text().replace("address: local", "address: auto"))
    res = run_cli([cfg, "--out", tmp_path / "r"])
    assert res.exit_code == 2 and res.stderr.startswith("error: run.ray.address: no Ray cluster answers at 'auto'")
    assert "cannot use a file" not in res.stderr


def _ray_processes(pids: set[int]) -> set[int]:
    """The processes of ``pids`` still running (a zombie, killed and waiting for whoever adopted it, is gone)."""
    alive = set()
    for p in pids:
        try:
            state = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            alive.add(p)
    return alive


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="the reaper reads /proc (Linux)")
def test_ray_processes_go_with_a_killed_driver(quickstart_rotary, write_config, tmp_path):
    """kill -9 of the driver alone (not its group): the Ray instance it started is gone within seconds."""
    from lceval.executors.reaper import descendants

    _, cfg = configs(quickstart_rotary, write_config, max_workers=1)
    proc = driver_with_rows(cfg, tmp_path / "ray", 4)
    ray_pids = set(descendants(proc.pid))
    assert len(ray_pids) >= 3  # gcs, raylet, a worker, the reaper
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 20
    while _ray_processes(ray_pids) and time.time() < deadline:
        time.sleep(0.2)
    left = _ray_processes(ray_pids)
    assert not left, [open(f"/proc/{p}/cmdline").read() for p in left]
