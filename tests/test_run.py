"""End-to-end runs: report files, determinism, resume after kill -9, lock, failures, full == flash."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from conftest import small_config
from lceval import registry
from lceval.attention.exact import FullAttention
from lceval.cli import main
from lceval.store import ResultsStore, read_rows


def run_cli(args):
    return CliRunner().invoke(main, ["run", *map(str, args), "--no-progress"])


def comparable(rows):
    return sorted((r["pairing"], r["sample_id"], r["correct"], round(r["answer_logprob"], 5), r["status"])
                  for r in rows)


def test_run_writes_report_and_full_equals_flash(quickstart_rotary, write_config, tmp_path):
    cfg = write_config(small_config(quickstart_rotary))
    res = run_cli([cfg, "--out", tmp_path / "run"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "run"
    from lceval.report.figures import file_stem

    for f in ["results.jsonl", "manifest.json", "report/results.csv", "report/cells.csv", "report/summary.md",
              f"report/heatmap_{file_stem('niah', 'm/full')}.png", f"report/heatmap_{file_stem('niah', 'm/flash')}.png",
              f"report/distance_{file_stem('niah')}.png", f"report/length_{file_stem('niah')}.png",
              "report/agreement.csv", "report/diagnosis.csv", "report/retrieval_heads.csv", "report/report.html"]:
        assert (out / f).exists(), f
    assert res.output.strip().splitlines()[-2].startswith("report: ")
    rows = read_rows(out)
    assert len(rows) == 2 * 2 * 3 * 3
    import pandas as pd

    table = pd.read_parquet(out / "report" / "results.parquet")
    csv = pd.read_csv(out / "report" / "results.csv")
    assert list(table.columns) == list(csv.columns) and len(table) == len(rows)
    assert sorted(table["sample_id"] + table["pairing"]) == sorted(r["sample_id"] + r["pairing"] for r in rows)
    full = {r["sample_id"]: r["correct"] for r in rows if r["attention"] == "full"}
    flash = {r["sample_id"]: r["correct"] for r in rows if r["attention"] == "flash"}
    assert full == flash
    assert {r["impl"] for r in rows} == {"torch.eager", "torch.sdpa_flash"}
    models = json.loads((out / "models.json").read_text())
    assert models["m"]["path"] == str(quickstart_rotary) and models["m"]["position"] == "rotary"
    assert models["m"]["measured"]["accuracy"] >= 0.95
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 0 and "torch" in manifest["versions"] and "git_commit" in manifest
    summary = (out / "report" / "summary.md").read_text()
    assert "| m/full |" in summary and "| m/flash |" in summary and "effective_length" in summary
    page = (out / "report" / "report.html").read_text()
    pngs = sorted(p.name for p in (out / "report").glob("*.png"))
    # self-contained, no file links: 2 heatmaps, the length and distance curves, 2 retrieval-head pictures
    assert page.count("src='data:image/png;base64,") == len(pngs) == 6
    agree = pd.read_csv(out / "report" / "agreement.csv")
    assert agree.loc[0, "pairing"] == "m/flash" and agree.loc[0, "oracle"] == "m/full" and agree.loc[0, "agree"] == 1.0
    assert "<td>m/full</td>" in page and "<td>m/flash</td>" in page


def test_same_seed_same_results(quickstart_rotary, write_config, tmp_path):
    cfg = write_config(small_config(quickstart_rotary))
    assert run_cli([cfg, "--out", tmp_path / "a"]).exit_code == 0
    assert run_cli([cfg, "--out", tmp_path / "b"]).exit_code == 0
    assert comparable(read_rows(tmp_path / "a")) == comparable(read_rows(tmp_path / "b"))


def test_resume_after_kill_9(quickstart_rotary, write_config, tmp_path):
    cfg_data = small_config(quickstart_rotary)
    cfg_data["run"]["batch_size"] = 1
    cfg_data["tasks"]["niah"] = {"lengths": [64, 128, 256, 512], "depths": [0.0, 0.25, 0.5, 0.75, 1.0], "samples": 8}
    cfg = write_config(cfg_data)
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "lceval.cli", "run", str(cfg), "--out", str(killed), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = killed / "results.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if results.exists() and results.stat().st_size > 0 and len(results.read_bytes().splitlines()) >= 40:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = len(read_rows(killed))
    total = 2 * 4 * 5 * 8
    assert 0 < partial < total, partial
    # simulate the worst moment too: a torn last line
    with results.open("ab") as f:
        f.write(b'{"task": "niah", "sample_id": "torn')
    res = run_cli([cfg, "--out", killed])
    assert res.exit_code == 0, res.output
    assert f"already done: {partial}" in res.output
    rows = read_rows(killed)
    keys = [(r["pairing"], r["sample_id"]) for r in rows]
    assert len(keys) == len(set(keys)) == total
    assert len(results.read_bytes().splitlines()) == total  # nothing duplicated on disk
    assert run_cli([cfg, "--out", tmp_path / "clean"]).exit_code == 0
    assert comparable(rows) == comparable(read_rows(tmp_path / "clean"))
    a = pd.read_csv(killed / "report" / "cells.csv")
    b = pd.read_csv(tmp_path / "clean" / "report" / "cells.csv")
    pd.testing.assert_frame_equal(a, b)


def test_second_concurrent_run_refused(quickstart_rotary, write_config, tmp_path):
    cfg = write_config(small_config(quickstart_rotary))
    with ResultsStore(tmp_path / "busy", {"config_hash": "x"}):
        res = run_cli([cfg, "--out", tmp_path / "busy"])
    assert res.exit_code == 2
    assert "another lceval run" in res.stderr and "--out" in res.stderr


def test_changed_config_refused_on_same_dir(quickstart_rotary, write_config, tmp_path):
    cfg = write_config(small_config(quickstart_rotary))
    assert run_cli([cfg, "--out", tmp_path / "r"]).exit_code == 0
    before = (tmp_path / "r" / "results.jsonl").read_bytes()
    res = run_cli([cfg, "--out", tmp_path / "r", "--set", "tasks.niah.samples=4"])
    assert res.exit_code == 2 and "different run (config tasks.niah.samples)" in res.stderr
    res = run_cli([cfg, "--out", tmp_path / "r", "--limit", "1"])
    assert res.exit_code == 2 and "different run (limit (None -> 1))" in res.stderr
    assert (tmp_path / "r" / "results.jsonl").read_bytes() == before  # nothing lost
    # report settings change no row: the run resumes (nothing to do) and the report uses them
    res = run_cli([cfg, "--out", tmp_path / "r", "--set", "report.threshold=10"])
    assert res.exit_code == 0 and "is complete (36 rows)" in res.output
    assert json.loads((tmp_path / "r" / "manifest.json").read_text())["config"]["report"]["threshold"] == 10
    assert "up to L scores >= 10 (absolute" in (tmp_path / "r" / "report" / "summary.md").read_text()
    res = CliRunner().invoke(main, ["report", str(tmp_path / "r"), "--threshold", "99.5"])
    assert res.exit_code == 0 and "up to L scores >= 99.5 (absolute" in (tmp_path / "r" / "report" / "summary.md").read_text()


class ExplodingAttention(FullAttention):
    name = "exploding"

    def __call__(self, q, k, v, causal=True, score_mod=None, scale=None):
        if q.shape[2] > 100:
            raise ValueError("boom in plugin")
        return super().__call__(q, k, v, causal, score_mod, scale)


class OOMAttention(FullAttention):
    name = "oom"

    def __call__(self, q, k, v, causal=True, score_mod=None, scale=None):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")


class NaNAttention(FullAttention):
    """NaN for the first sample of every batch only."""

    name = "nan"

    def __call__(self, q, k, v, causal=True, score_mod=None, scale=None):
        out = super().__call__(q, k, v, causal, score_mod, scale)
        out[0] = float("nan")
        return out


def test_failing_cells_recorded_and_run_goes_on(quickstart_rotary, write_config, tmp_path):
    registry.attention.register("exploding", ExplodingAttention)
    registry.attention.register("nan", NaNAttention)
    registry.attention.register("oom", OOMAttention)
    data = small_config(quickstart_rotary)
    data["pairings"] = [{"model": "m", "attention": ["exploding", "nan", "oom", "full"]}]
    res = run_cli([write_config(data), "--out", tmp_path / "f"])
    assert res.exit_code == 1
    rows = read_rows(tmp_path / "f")
    by = {}
    for r in rows:
        by.setdefault((r["attention"], r["context_length"]), set()).add(r["status"])
    assert by[("exploding", 64)] == {"ok"} and by[("exploding", 128)] == {"error"}
    assert by[("nan", 64)] == by[("nan", 128)] == {"nonfinite", "ok"}  # per sample, not per batch
    nan_ok = {r["sample_id"]: r["correct"] for r in rows if r["attention"] == "nan" and r["status"] == "ok"}
    full = {r["sample_id"]: r["correct"] for r in rows if r["attention"] == "full"}
    assert nan_ok and all(full[s] == c for s, c in nan_ok.items())  # batch-mates keep their real result
    assert by[("oom", 64)] == by[("oom", 128)] == {"oom"}
    assert by[("full", 64)] == by[("full", 128)] == {"ok"}
    assert any("boom in plugin" in (r["message"] or "") for r in rows)
    assert any("80.00 GiB" in (r["message"] or "") for r in rows if r["status"] == "oom")
    assert len(rows) == 4 * 18
    assert "samples failed" in res.stderr


def test_out_is_a_file_and_cuda_without_gpu(quickstart_rotary, write_config, tmp_path):
    cfg = write_config(small_config(quickstart_rotary))
    (tmp_path / "afile").write_text("x")
    res = run_cli([cfg, "--out", tmp_path / "afile"])
    assert res.exit_code == 2 and "is a file, not a directory" in res.stderr
    if not torch.cuda.is_available():
        res = run_cli([cfg, "--out", tmp_path / "r", "--set", "run.device=cuda"])
        assert res.exit_code == 2 and "run.device: cuda was asked for" in res.stderr


def test_report_command_rebuilds_offline(quickstart_rotary, write_config, tmp_path):
    cfg = write_config(small_config(quickstart_rotary))
    assert run_cli([cfg, "--out", tmp_path / "r"]).exit_code == 0
    first = (tmp_path / "r" / "report" / "cells.csv").read_text()
    for f in (tmp_path / "r" / "report").iterdir():
        f.unlink()
    res = CliRunner().invoke(main, ["report", str(tmp_path / "r")])
    assert res.exit_code == 0 and (tmp_path / "r" / "report" / "cells.csv").read_text() == first
    res = CliRunner().invoke(main, ["report", str(tmp_path / "nothing")])
    assert res.exit_code == 2


def test_ctrl_c_keeps_rows_and_says_how_to_resume(quickstart_rotary, write_config, tmp_path):
    data = small_config(quickstart_rotary)
    data["run"]["batch_size"] = 1
    # 270 samples: on a loaded machine the run must not finish before this process sees its first 10 rows
    data["tasks"]["niah"] = {"lengths": [128, 256, 512], "depths": [0.0, 0.5, 1.0], "samples": 30}
    out = tmp_path / "int"
    # a terminal's Ctrl-C reaches a foreground process whose SIGINT is at its default; a test run started in the
    # background (nohup, `&` in a script) inherits SIGINT ignored, so restore the default for the child
    proc = subprocess.Popen([sys.executable, "-m", "lceval.cli", "run", str(write_config(data)), "--out", str(out),
                             "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and len(read_rows(out)) < 10:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "run the same command again to resume" in err and "Traceback" not in err
    kept = len(read_rows(out))
    assert 10 <= kept < 270


def test_corrupt_checkpoint_is_a_user_error(quickstart_rotary, write_config, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(quickstart_rotary, bad)
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    data = small_config(bad)
    res = run_cli([write_config(data), "--out", tmp_path / "r"])
    assert res.exit_code == 2 and "cannot load the checkpoint" in res.stderr and "Traceback" not in res.output


def test_generation_and_teacher_forcing_give_the_same_rows_for_every_variant(quickstart_rotary, write_config, tmp_path):
    data = small_config(quickstart_rotary)
    data["pairings"] = [{"model": "m", "attention": ["full", "flash", {"name": "sliding_window", "window": 32},
                                                      {"name": "sparse", "block": 16, "local_blocks": 2}, "linear"]}]
    data["tasks"] = {"niah": {"lengths": [96, 160], "depths": [0.0, 1.0], "samples": 3}}
    auto = write_config(data, "auto.yaml")
    data["run"]["answer"] = "generate"
    gen = write_config(data, "gen.yaml")
    assert run_cli([auto, "--out", tmp_path / "a"]).exit_code in (0, 1)
    assert run_cli([gen, "--out", tmp_path / "g"]).exit_code in (0, 1)
    a, g = read_rows(tmp_path / "a"), read_rows(tmp_path / "g")
    assert {r["answer_mode"] for r in a} == {"teacher_forcing"} and {r["answer_mode"] for r in g} == {"generate"}
    key = lambda rows: sorted((r["pairing"], r["sample_id"], r["score"], r["status"]) for r in rows)  # noqa: E731
    assert key(a) == key(g) and len(a) == 5 * 2 * 2 * 3
    assert {r["score"] for r in a} == {0.0, 1.0}  # both outcomes occur
    for ra in a:  # a correct answer is the same text either way
        rg = next(r for r in g if (r["pairing"], r["sample_id"]) == (ra["pairing"], ra["sample_id"]))
        if ra["score"] == 1.0:
            assert ra["prediction"] == rg["prediction"] == ra["references"][0]


def test_threads_follow_the_setting_and_the_environment(monkeypatch):
    from lceval.runner import use_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert use_threads("auto") == 1 and torch.get_num_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        cores = len(os.sched_getaffinity(0))
        assert use_threads("auto") == cores and torch.get_num_threads() == cores
        assert use_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_sigterm_keeps_rows_says_so_and_resumes(quickstart_rotary, write_config, tmp_path):
    """SIGTERM is handled as Ctrl-C: a message with the resume hint, exit 143, rows kept; the resume is exact."""
    cfg_data = small_config(quickstart_rotary)
    cfg_data["run"]["batch_size"] = 1
    cfg_data["tasks"]["niah"] = {"lengths": [64, 128, 256, 512], "depths": [0.0, 0.5, 1.0], "samples": 8}
    cfg = write_config(cfg_data)
    out = tmp_path / "termed"
    cmd = [sys.executable, "-m", "lceval.cli", "run", str(cfg), "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    results = out / "results.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (results.exists() and len(results.read_bytes().splitlines()) >= 20):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM): rows written so far are kept" in err and "run the same command again" in err
    kept = len(read_rows(out))
    assert 0 < kept < 2 * 4 * 3 * 8
    res = run_cli([cfg, "--out", out])
    assert res.exit_code == 0 and f"already done: {kept}" in res.output, res.output
    assert len(read_rows(out)) == 2 * 4 * 3 * 8


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="the reaper reads /proc (Linux)")
def test_a_process_name_that_is_not_utf8_does_not_blind_the_reaper():
    """The reaper reads every process on the machine; one named with bytes that are not UTF-8 (a multibyte
    character cut at 15 bytes does it) used to end it with a UnicodeDecodeError, and Ray's agents outlived a
    killed driver."""
    from lceval.executors.reaper import _stat, descendants

    child = subprocess.Popen([sys.executable, "-c", "import sys, time\n"
                              "open('/proc/self/comm', 'wb').write(b'ab\\xff\\xfe')\nprint(flush=True)\n"
                              "time.sleep(60)"], stdout=subprocess.PIPE)
    try:
        child.stdout.readline()
        assert open(f"/proc/{child.pid}/stat", "rb").read().split(b" ")[1] == b"(ab\xff\xfe)"
        assert _stat(child.pid) == (os.getpid(), _stat(child.pid)[1])
        assert descendants(os.getpid())[child.pid] == _stat(child.pid)[1]  # found, with its start time
    finally:
        child.kill()
        child.wait()


def test_a_look_taken_while_the_driver_dies_does_not_replace_the_last_whole_one(monkeypatch):
    """The driver's death closes the pipe before its children are handed to init; a look at /proc that spans it
    sees part of the tree (Ray's raylet gone, its agents no longer below the driver) and must not count."""
    from lceval.executors import reaper

    read, write = os.pipe()
    whole, part = {10: 1, 11: 2, 12: 3}, {10: 1}
    looks = []

    def look(driver):
        looks.append(driver)
        if len(looks) == 1:
            return dict(whole)
        os.close(write)  # the driver dies during this look
        return dict(part)

    monkeypatch.setattr(reaper, "descendants", look)
    with os.fdopen(read, "rb") as stdin:
        assert reaper.watch(4321, stdin) == whole
    assert looks == [4321, 4321]


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="the reaper reads /proc (Linux)")
def test_the_reaper_kills_what_a_seen_process_started_after_its_last_look():
    """A snapshot taken before a process started a child (as Ray's raylet starts an agent late under load): the
    reaper still kills the child with its parent, and nothing else."""
    from lceval.executors.reaper import _stat, descendants, reap

    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, time\n"
                               "time.sleep(0.5)\nsubprocess.Popen(['sleep', '60'])\ntime.sleep(60)"])
    seen = {parent.pid: _stat(parent.pid)[1]}  # the last look: no child yet
    assert descendants(parent.pid) == {}
    deadline = time.time() + 20
    while not descendants(parent.pid) and time.time() < deadline:
        time.sleep(0.05)
    (child,) = descendants(parent.pid)
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        assert reap(seen) == 2
        assert parent.wait(timeout=10) == -signal.SIGKILL
        deadline = time.time() + 10
        while (st := _stat(child)) is not None and time.time() < deadline:  # gone once init reaps it
            state = open(f"/proc/{child}/stat").read().rsplit(")", 1)[1].split()[0]
            if state == "Z":
                break
            time.sleep(0.05)
        assert st is None or state == "Z"
        assert bystander.poll() is None  # not seen, not started by what was seen
    finally:
        bystander.kill()
