"""Results you can trust: run identity, retries, quarantine, clean errors for damaged files."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from conftest import small_config
from lceval.cli import main
from lceval.store import QUARANTINE, read_rows


def run(args):
    return CliRunner().invoke(main, ["run", *map(str, args), "--no-progress"])


def tiny(ckpt, **tasks):
    data = small_config(ckpt)
    data["pairings"] = [{"model": "m", "attention": "flash"}]
    data["tasks"] = {"niah": {"lengths": [64, 96], "depths": [0.0, 1.0], "samples": 2, **tasks}}
    return data


def test_a_checkpoint_swapped_under_a_run_is_refused(quickstart_rotary, write_config, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(quickstart_rotary, ckpt)
    cfg = write_config(tiny(ckpt))
    assert run([cfg, "--out", tmp_path / "r"]).exit_code == 0
    card = json.loads((ckpt / "card.json").read_text())
    card["note"] = "retrained in place"
    (ckpt / "card.json").write_text(json.dumps(card))
    res = run([cfg, "--out", tmp_path / "r"])
    assert res.exit_code == 2 and "model m's contents" in res.stderr and "different run" in res.stderr
    models = json.loads((tmp_path / "r" / "models.json").read_text())
    assert models["m"]["sha256"] and len(read_rows(tmp_path / "r")) == 8


def test_rows_are_verified_without_trusting_the_manifest(quickstart_rotary, write_config, tmp_path):
    cfg = write_config(tiny(quickstart_rotary))
    out = tmp_path / "r"
    assert run([cfg, "--out", out]).exit_code == 0
    (out / "manifest.json").unlink()
    res = run([cfg, "--out", out, "--set", "run.seed=5"])  # the run's identity file still says what changed
    assert res.exit_code == 2 and "different run (config run.seed)" in res.stderr, res.stderr
    shutil.move(out / "identities", tmp_path / "identities")
    res = run([cfg, "--out", out, "--set", "run.seed=5"])
    assert res.exit_code == 2 and "different run" in res.stderr and "manifest is missing" in res.stderr
    shutil.move(tmp_path / "identities", out / "identities")
    res = run([cfg, "--out", out])  # the same config resumes: the rows carry its run id
    assert res.exit_code == 0 and "is complete" in res.output
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["seed"] = 5
    manifest["config"]["run"]["seed"] = 5
    (out / "manifest.json").write_text(json.dumps(manifest))
    res = run([cfg, "--out", out, "--set", "run.seed=5"])  # an edited manifest does not make seed-0 rows seed 5
    assert res.exit_code == 2 and "different run (config run.seed)" in res.stderr
    (out / "manifest.json").write_text("{not json")
    res = run([cfg, "--out", out])
    assert res.exit_code == 0 and json.loads((out / "manifest.json").read_text())["seed"] == 0


def test_batch_size_and_report_settings_keep_the_identity(quickstart_rotary, write_config, tmp_path):
    cfg = write_config(tiny(quickstart_rotary))
    assert run([cfg, "--out", tmp_path / "r"]).exit_code == 0
    res = run([cfg, "--out", tmp_path / "r", "--set", "run.batch_size=1", "--set", "report.threshold=50"])
    assert res.exit_code == 0 and "is complete (8 rows)" in res.output


def test_retry_failed_supersedes_failed_rows(quickstart_rotary, write_config, tmp_path):
    cfg = write_config(tiny(quickstart_rotary))
    out = tmp_path / "r"
    assert run([cfg, "--out", out]).exit_code == 0
    lines = (out / "results.jsonl").read_text().splitlines()
    broken = json.loads(lines[0])
    broken.update(status="oom", score=0.0, correct=False, message="out of memory: simulated")
    (out / "results.jsonl").write_text("\n".join([json.dumps(broken)] + lines[1:]) + "\n")
    res = run([cfg, "--out", out])  # failed rows count as done: nothing is retried silently
    assert "is complete" in res.output and res.exit_code == 1
    res = run([cfg, "--out", out, "--retry-failed"])
    assert res.exit_code == 0 and "rows written this time: 1" in res.output
    rows = read_rows(out)
    assert len(rows) == 8 and {r["status"] for r in rows} == {"ok"}
    assert len((out / "results.jsonl").read_text().splitlines()) == 9  # append-only: the old row stays on disk


def test_lines_that_are_not_rows_are_quarantined(quickstart_rotary, write_config, tmp_path):
    cfg = write_config(tiny(quickstart_rotary))
    out = tmp_path / "r"
    assert run([cfg, "--out", out]).exit_code == 0
    with (out / "results.jsonl").open("ab") as f:
        f.write(b"42\n{}\n[1,2,3]\n\x00\x00garbage\n\xff\xfe{\n" + b'{"pairing": "m/flash", "task": "niah"}\n')
    res = run([cfg, "--out", out])
    assert res.exit_code == 0 and "is complete" in res.output
    assert "6 line(s)" in res.stderr and res.stderr.count("not result rows") == 1
    assert len((out / QUARANTINE).read_bytes().splitlines()) == 6
    rep = CliRunner().invoke(main, ["report", str(out)])
    assert rep.exit_code == 0 and (out / "report" / "cells.csv").exists()


def test_an_empty_run_directory_accepts_a_corrected_config(quickstart_rotary, write_config, tmp_path):
    out = tmp_path / "r"
    bad = write_config(tiny(quickstart_rotary, lengths=[12]), "bad.yaml")
    res = run([bad, "--out", out])
    assert res.exit_code in (1, 2)
    good = write_config(tiny(quickstart_rotary), "good.yaml")
    res = run([good, "--out", out])
    assert res.exit_code == 0, res.output


def test_the_lock_names_its_holder(quickstart_rotary, write_config, tmp_path):
    import os

    from lceval.store import ResultsStore

    cfg = write_config(tiny(quickstart_rotary))
    with ResultsStore(tmp_path / "busy"):
        res = run([cfg, "--out", tmp_path / "busy"])
    assert res.exit_code == 2 and f"(pid {os.getpid()})" in res.stderr


def test_two_processes_share_one_training(tmp_path):
    """Two runs that need the same untrained model: one trains it, the other waits and loads it."""
    import os
    import subprocess
    import sys

    script = (
        "import sys, time\n"
        "from lceval.config import ReferenceSpec\n"
        "import lceval.train as t\n"
        "real = t.train\n"
        "def counted(*a, **k):\n"
        "    open(sys.argv[1], 'a').write('trained\\n'); time.sleep(1); return real(*a, **k)\n"
        "t.train = counted\n"
        "spec = ReferenceSpec.model_validate({'type': 'reference', 'train': {'d_model': 16, 'n_layers': 1, 'steps': 3,"
        " 'batch_size': 2, 'eval_samples': 2}})\n"
        "print(t.ensure_trained(spec.train, progress=False))\n"
    )
    env = dict(os.environ, LCEVAL_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    log = tmp_path / "log"
    procs = [subprocess.Popen([sys.executable, "-c", script, str(log)], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    paths = {p.communicate(timeout=300)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs) and len(paths) == 1
    assert log.read_text().count("trained") == 1


def test_ctrl_c_anywhere_exits_130(quickstart_rotary, write_config, tmp_path, monkeypatch):
    import lceval.report
    import lceval.resolve

    cfg = write_config(tiny(quickstart_rotary))

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(lceval.resolve, "load_config", interrupt)  # before the store opens
    res = run([cfg, "--out", tmp_path / "a"])
    assert res.exit_code == 130 and "run the same command again" in res.stderr
    monkeypatch.undo()
    monkeypatch.setattr(lceval.report, "build_report", interrupt)  # while the report is built
    res = run([cfg, "--out", tmp_path / "b"])
    assert res.exit_code == 130 and len(read_rows(tmp_path / "b")) == 8  # the rows are kept


def test_a_file_size_limit_is_a_clean_error_and_keeps_rows(quickstart_rotary, write_config, tmp_path):
    import resource
    import subprocess
    import sys

    data = tiny(quickstart_rotary, samples=6)
    data["run"]["batch_size"] = 1
    cfg = write_config(data)
    out = tmp_path / "r"
    assert run([cfg, "--out", tmp_path / "sizes"]).exit_code == 0
    total = len(read_rows(tmp_path / "sizes"))
    row = max(len(x) for x in (tmp_path / "sizes" / "results.jsonl").read_bytes().splitlines()) + 1
    biggest = max((tmp_path / "sizes" / f).stat().st_size for f in ("manifest.json", "models.json"))
    cap = biggest + int(2.5 * row)  # the limit is per file: the manifest fits, results.jsonl fills up before the end
    assert (tmp_path / "sizes" / "results.jsonl").stat().st_size > cap  # (else the grid is too small to test this)

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (cap, cap))

    res = subprocess.run([sys.executable, "-m", "lceval.cli", "run", str(cfg), "--out", str(out), "--no-progress"],
                         capture_output=True, text=True, preexec_fn=limit, timeout=300)
    assert res.returncode == 2, res.stderr
    assert "file too large (EFBIG)" in res.stderr and "Traceback" not in res.stderr
    kept = read_rows(out)
    assert 0 < len(kept) < total and len(kept) <= cap // (row - 40)  # whole rows only; a torn tail is dropped
    res = run([cfg, "--out", out])  # without the limit the run resumes and finishes
    assert res.exit_code == 0 and len(read_rows(out)) == total


def _tmpfs(path, size):
    import subprocess

    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return res.returncode == 0


def test_disk_full_and_read_only_are_clean_errors(quickstart_rotary, write_config, tmp_path):
    import subprocess

    import pytest

    full, ro = tmp_path / "full", tmp_path / "ro"
    if not _tmpfs(full, "16k"):
        pytest.skip("mounting a small tmpfs needs privileges this machine does not give")
    try:
        data = tiny(quickstart_rotary)
        data["run"]["batch_size"] = 1
        cfg = write_config(data)
        res = run([cfg, "--out", full / "r"])
        assert res.exit_code == 2 and "no space left on device (ENOSPC)" in res.stderr, res.output
        assert str(full / "r") in res.stderr  # the one line names the path
        kept = read_rows(full / "r")
        assert len(kept) < 8 and all(r["status"] == "ok" for r in kept)
        assert subprocess.run(["umount", str(full)], capture_output=True).returncode == 0  # no file left open on it
        assert _tmpfs(ro, "64k")
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        res = run([cfg, "--out", ro / "r"])
        assert res.exit_code == 2 and "read-only file system (EROFS)" in res.stderr and "Traceback" not in res.output
    finally:
        for p in (full, ro):
            if subprocess.run(["umount", str(p)], capture_output=True).returncode:
                subprocess.run(["umount", "-l", str(p)], capture_output=True)


def test_rows_of_an_older_lceval_are_named_as_such(quickstart_rotary, write_config, tmp_path):
    cfg = write_config(tiny(quickstart_rotary))
    out = tmp_path / "r"
    assert run([cfg, "--out", out]).exit_code == 0
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    (out / "results.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "run_id"}) + "\n"
                                               for r in lines))
    res = run([cfg, "--out", out])
    assert res.exit_code == 2 and "older lceval" in res.stderr
    rep = CliRunner().invoke(main, ["report", str(out)])  # the report still reads them
    assert rep.exit_code == 0


def _qa_config(tmp_path, content):
    import yaml

    data = tmp_path / "squad.json"
    data.write_text(json.dumps(content) if not isinstance(content, str) else content)
    cfg = {"run": {"name": "qa", "seed": 0},
           "models": {"m": {"type": "reference", "checkpoint": "zoo:quickstart-rotary"}},
           "pairings": [{"model": "m", "attention": "full"}],
           "tasks": {"qa": {"path": "squad.json", "lengths": [256], "samples": 2}}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, data


def _squad(answers):
    return {"data": [{"paragraphs": [{"context": f"Paragraph {i} says the answer is {a} .",
                                      "qas": [{"question": f"What does paragraph {i} say ?", "answers": [{"text": a}]}]}
                                     for i, a in enumerate(answers)]}]}


def test_an_edited_qa_file_is_a_new_run_with_new_samples(tmp_path):
    """The qa file's contents are in the run identity and in the sample-cache key (a stale cache, a resume or
    --retry-failed can never score the old references under the new data)."""
    from lceval.dataset import dataset_key
    from lceval.registry import tasks
    from lceval.resolve import load_config
    from lceval.runner import identity, run_id
    from lceval.tokenizer import word_level

    path, data = _qa_config(tmp_path, _squad(["red", "blue", "green"]))
    first = load_config(path)
    qa = tasks.get("qa")(first.tasks["qa"], seed=0)
    tok = word_level(qa.vocabulary() + ["black", "white", "grey"])
    before = (run_id(identity(first, None, {})), dataset_key(qa, tok, None), qa.items[0]["answers"])
    data.write_text(json.dumps(_squad(["black", "white", "grey"])))  # every answer changed, same path
    second = load_config(path)
    qa2 = tasks.get("qa")(second.tasks["qa"], seed=0)
    after = (run_id(identity(second, None, {})), dataset_key(qa2, tok, None), qa2.items[0]["answers"])
    assert before[2] == ["red"] and after[2] == ["black"]
    assert before[0] != after[0] and before[1] != after[1]
    dumped = second.tasks["qa"].model_dump(mode="json")["path"]
    assert dumped["path"] == str(data.resolve()) and len(dumped["sha256"]) == 16


@pytest.mark.parametrize("content,want", [
    ([1, 2, 3], "each HotpotQA example must be an object"),
    ({"data": [{"paragraphs": [{"context": "c .", "qas": [{"question": "q ?", "answers": ["a", "b"]}]}]}]},
     "answers must be a list of"),
    ({"data": [{"paragraphs": [{"context": None, "qas": [{"question": "q ?", "answers": [{"text": "a"}]}]}]}]},
     "context must be non-empty text"),
    ([{"question": "q ?", "answer": "a", "context": None}], "context must be a list"),
    ({"data": {"x": 1}}, "neither SQuAD nor HotpotQA"),
    ("{", "is not JSON"),
])
def test_qa_file_faults_are_one_line_config_errors(tmp_path, content, want):
    path, _ = _qa_config(tmp_path, content)
    res = CliRunner().invoke(main, ["run", str(path), "--dry-run"])
    assert res.exit_code == 2 and want in res.stderr and res.stderr.startswith("error: tasks.qa.path"), res.output
    assert len(res.stderr.strip().splitlines()) == 1


def test_numeric_qa_answers_are_taken_as_text(tmp_path):
    from lceval.tasks.ruler.qa import load_qa

    path = tmp_path / "hotpot.json"
    path.write_text(json.dumps([{"question": f"When was {i} ?", "answer": 1990 + i, "context": [["t", ["In", str(1990 + i)]]]}
                                for i in range(2)]))
    assert [it["answers"] for it in load_qa(path)] == [["1990"], ["1991"]]


def test_report_uses_the_manifests_run_only(quickstart_rotary, write_config, tmp_path):
    cfg = write_config(tiny(quickstart_rotary))
    out = tmp_path / "r"
    assert run([cfg, "--out", out]).exit_code == 0
    before = (out / "report" / "cells.csv").read_text()
    rows = (out / "results.jsonl").read_text().splitlines()
    alien = json.loads(rows[0])
    alien.update(run_id="0123456789abcdef", score=0.0, correct=False, prediction="wrong")
    with (out / "results.jsonl").open("a") as f:
        f.write(json.dumps(alien) + "\n")  # a row of another run, appended by hand
    rep = CliRunner().invoke(main, ["report", str(out)])
    assert rep.exit_code == 0 and "1 row(s) of another run id" in rep.stderr and "the 8 rows of run" in rep.stderr
    assert (out / "report" / "cells.csv").read_text() == before  # the score is the run's own
    (out / "manifest.json").unlink()
    rep = CliRunner().invoke(main, ["report", str(out)])
    assert rep.exit_code == 2 and "rows of 2 different runs and no manifest.json" in rep.stderr


@pytest.mark.parametrize("size", ["4k", "8k", "64k"])
def test_a_full_disk_names_the_file_and_leaves_no_temporary(quickstart_rotary, write_config, tmp_path, size):
    """Wherever the disk fills (the manifest, the identity, the report's figures), the one line names a path
    inside the run directory and no half-written temporary file stays behind."""
    import subprocess

    disk = tmp_path / "disk"
    if not _tmpfs(disk, size):
        pytest.skip("mounting a small tmpfs needs privileges this machine does not give")
    try:
        res = run([write_config(tiny(quickstart_rotary)), "--out", disk / "r"])
        err = res.stderr.strip()
        assert res.exit_code == 2 and "no space left on device (ENOSPC)" in err and len(err.splitlines()) == 1, err
        assert f"cannot use {disk / 'r'}/" in err and "cannot use a file" not in err
        assert not list((disk / "r").rglob("*.tmp"))
    finally:
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)
