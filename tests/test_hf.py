"""Hugging Face models (``type: hf``) and user modules (``type: module``).

Tiny random Llama, Mistral, Qwen2 and GPT-2 models are built here from configs with a byte-level BPE
trained here (nothing downloaded) and saved as safetensors, as a user's local checkpoint would be.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from click.testing import CliRunner  # noqa: E402

from conftest import assert_chat_exact, small_config, train_byte_bpe  # noqa: E402
from lceval.attention import build_attention  # noqa: E402
from lceval.cli import main  # noqa: E402
from lceval.config import HFSpec  # noqa: E402
from lceval.generate import greedy_generate  # noqa: E402
from lceval.models.hf import HFAdapter  # noqa: E402
from lceval.store import read_rows  # noqa: E402
from lceval.tasks.haystack import essay_sentence  # noqa: E402
from lceval.tasks.niah import KEYS, NEEDLE, QUESTION  # noqa: E402

FAMILIES = ["llama", "mistral", "qwen2", "gpt2"]
CHAT = ("{% for m in messages %}<|user|>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %} <|assistant|>{% endif %}")


def _tokenizer():
    from transformers import PreTrainedTokenizerFast

    rng = np.random.default_rng(0)
    corpus = [essay_sentence(rng) for _ in range(400)]
    corpus += [NEEDLE.format(key=k, value=100 + i) + " " + QUESTION.format(key=k) for i, k in enumerate(KEYS)]
    tok = PreTrainedTokenizerFast(tokenizer_object=train_byte_bpe(corpus, 400), bos_token="<s>", eos_token="<s>")
    tok.chat_template = CHAT
    return tok


def _config(family: str, vocab: int, bos: int):
    import transformers as tf

    common = dict(vocab_size=vocab, bos_token_id=bos, eos_token_id=bos)
    if family == "gpt2":
        return tf.GPT2Config(n_positions=128, n_embd=64, n_layer=2, n_head=4, **common)
    cls = {"llama": tf.LlamaConfig, "mistral": tf.MistralConfig, "qwen2": tf.Qwen2Config}[family]
    return cls(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=512, **common)


@pytest.fixture(scope="session")
def hf_models(tmp_path_factory) -> dict[str, Path]:
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("hf")
    tok = _tokenizer()
    out = {}
    for family in FAMILIES:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(_config(family, len(tok), tok.bos_token_id))
        with torch.no_grad():  # larger weights than the default init, so variants change the argmax
            for p in model.parameters():
                p.mul_(4.0) if p.dim() > 1 else None
        model.save_pretrained(root / family)
        tok.save_pretrained(root / family)
        out[family] = root / family
    return out


def _adapter(path, **spec) -> HFAdapter:
    a = HFAdapter(HFSpec(type="hf", path=path, **spec))
    a.prepare()
    return a


def _eager(path, **kw):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", **kw).eval()


def _prompt(adapter, words=12):
    text = " ".join(essay_sentence(np.random.default_rng(words)) for _ in range(3))
    ids = adapter.tokenizer.prefix() + adapter.tokenizer.piece(text)
    return torch.tensor([ids[:words]])


@pytest.mark.parametrize("family", FAMILIES)
def test_generation_equals_transformers_eager(family, hf_models):
    """Greedy decoding through lceval's full and flash attention emits exactly what transformers' eager
    attention generates, and the logits agree at every position."""
    adapter = _adapter(hf_models[family])
    eager = _eager(hf_models[family])
    ids = _prompt(adapter, 20)
    want = eager.generate(ids, max_new_tokens=12, min_new_tokens=12, do_sample=False)[0, ids.shape[1]:].tolist()
    with torch.no_grad():
        ref = eager(ids).logits
    for name in ("full", "flash"):
        model = adapter.with_attention(build_attention(name))
        got = greedy_generate(model, ids, 12, stop_ids=[])[0].tokens
        assert got == want, name
        with torch.no_grad():
            logits = model.logits_at(model.hidden(ids), torch.arange(ids.shape[1])[None])
        assert (logits - ref).abs().max() < 1e-4, name


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_every_variant_decodes_with_the_cache_as_by_recomputation(family, hf_models):
    adapter = _adapter(hf_models[family])
    ids = _prompt(adapter, 40)
    variants = [("full", {}), ("flash", {}), ("sliding_window", {"window": 7}),
                ("sparse", {"block": 16, "local_blocks": 1, "global_blocks": 1}), ("linear", {})]
    outputs = {}
    for name, params in variants:
        model = adapter.with_attention(build_attention(name, **params))
        cached = greedy_generate(model, ids, 10, stop_ids=[])[0].tokens
        assert cached == greedy_generate(model, ids, 10, stop_ids=[], recompute=True)[0].tokens, name
        outputs[name] = cached
    assert outputs["full"] == outputs["flash"]
    logits = {}
    for name in ("full", "linear"):  # the variant really runs inside the model
        model = adapter.with_attention(build_attention(name))
        with torch.no_grad():
            logits[name] = model.logits_at(model.hidden(ids), torch.arange(ids.shape[1])[None])
    assert (logits["full"] - logits["linear"]).abs().max() > 1e-2
    # a window as long as the input is full attention
    wide = adapter.with_attention(build_attention("sliding_window", window=ids.shape[1] + 10))
    assert greedy_generate(wide, ids, 10, stop_ids=[])[0].tokens == outputs["full"]


def test_the_cache_appends_in_place_and_holds_what_transformers_cache_holds(monkeypatch):
    """lceval's cache layer writes each step into spare room (one buffer across decoding steps, not a copy of the
    whole cache per token) and always holds what transformers' concatenating DynamicLayer holds: through a
    prefill, decoding steps past the spare room, a prefix handed to every row, a crop and a batch selection."""
    from transformers.cache_utils import DynamicLayer

    import lceval.attention.cache as cache_mod
    import lceval.models.hf_cache as hf_cache

    monkeypatch.setattr(cache_mod, "SPARE_MIN", 3)
    ours, theirs = hf_cache.SpareLayer(), DynamicLayer()
    g = torch.Generator().manual_seed(0)

    def step(t, b=1):
        k, v = torch.randn(b, 2, t, 4, generator=g), torch.randn(b, 2, t, 4, generator=g)
        a, b_ = ours.update(k, v), theirs.update(k, v)
        assert torch.equal(a[0], b_[0]) and torch.equal(a[1], b_[1])
        assert ours.get_seq_length() == theirs.get_seq_length()

    step(20)  # room for 3 more
    buffer = ours.keys.data_ptr()
    for _ in range(3):
        step(1)
        assert ours.keys.data_ptr() == buffer  # appended in place
    step(1)  # past the room: a new buffer, filled part copied
    assert ours.keys.data_ptr() != buffer
    for layer in (ours, theirs):
        layer.batch_repeat_interleave(3)
    step(5, b=3)
    step(1, b=3)
    for layer in (ours, theirs):
        layer.crop(-4)
    step(2, b=3)  # writes over the cropped positions
    for layer in (ours, theirs):
        layer.batch_select_indices(torch.tensor([2, 0]))
    for _ in range(6):
        step(1, b=2)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_prefix_kept_between_batches_continues_a_transformers_cache(family, hf_models):
    """Two batches of one haystack parting at different depths, with a PrefixStore: the second continues from a
    copy of the first's prefix (``SpareCache.take_prefix``) and every variant generates what it generates from
    the whole prompts; the stored copy is never written by the batches that continue from it."""
    from transformers.cache_utils import DynamicSlidingWindowLayer

    from lceval.generate import PrefixStore

    adapter = _adapter(hf_models[family])
    hay = _prompt(adapter, 40)[0]
    g = torch.Generator().manual_seed(5)

    def batch(depth: int, n: int):
        out = hay.repeat(n, 1)
        out[:, depth:] = torch.randint(10, adapter.tokenizer.vocab_size, (n, 40 - depth), generator=g)
        return out

    for name, params in [("flash", {}), ("sliding_window", {"window": 7}),
                         ("sparse", {"block": 16, "local_blocks": 1, "global_blocks": 1}), ("linear", {})]:
        model = adapter.with_attention(build_attention(name, **params))
        store = PrefixStore(1 << 30)
        for depth, stored in ((20, 0), (30, 20)):
            prompts = batch(depth, 2)
            first = store.cache
            before = first.layers[0].keys.clone() if first is not None else None
            got = greedy_generate(model, prompts, 6, stop_ids=[], reuse_prefix=True, store=store)
            assert [a.tokens for a in got] == [a.tokens for a in greedy_generate(model, prompts, 6, stop_ids=[])]
            assert [a.prefill_tokens for a in got] == [40 - stored, 40 - depth], name
            assert store.cache.get_seq_length() == depth and store.cache is not first
            assert all(x.untyped_storage().nbytes() == x.numel() * x.element_size()  # no spare room kept
                       for layer in store.cache.layers for x in (layer.keys, layer.values))
            if first is not None:
                assert torch.equal(first.layers[0].keys, before)
    cache = model.new_cache()
    assert not cache.take_prefix(store.cache, 31)  # longer than the stored prefix
    cache.layers[0] = DynamicSlidingWindowLayer(sliding_window=8)
    assert not cache.take_prefix(store.cache, 10)  # a layer that keeps only a window cannot be cut to a prefix
    assert cache.get_seq_length() == 0


def test_rope_override_matches_transformers_with_the_same_scaling(hf_models):
    path = hf_models["llama"]
    scaled = _adapter(path, rope={"scaling": "linear", "factor": 4.0, "theta": 500.0})
    plain = _adapter(path)
    assert scaled.describe()["rope"]["rope_type"] == "linear" and scaled.describe()["rope"]["rope_theta"] == 500.0
    cfg = transformers.AutoConfig.from_pretrained(path)
    cfg.rope_parameters = {"rope_type": "linear", "factor": 4.0, "rope_theta": 500.0}
    eager = _eager(path, config=cfg)
    ids = _prompt(scaled, 30)
    with torch.no_grad():
        want = eager(ids).logits
        index = torch.arange(ids.shape[1])[None]
        got = scaled.with_attention(build_attention("full"))
        got = got.logits_at(got.hidden(ids), index)
        base = plain.with_attention(build_attention("full"))
        base = base.logits_at(base.hidden(ids), index)
    assert (got - want).abs().max() < 1e-4
    assert (got - base).abs().max() > 1e-2  # the override changed the positions


def test_sliding_window_equals_mistrals_own_window(tmp_path):
    """lceval's sliding_window(W) inside a Mistral model equals that model's own sliding-window eager attention."""
    import transformers as tf

    tok = _tokenizer()
    torch.manual_seed(1)
    cfg = _config("mistral", len(tok), tok.bos_token_id)
    cfg.sliding_window = 8
    model = tf.MistralForCausalLM(cfg)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    eager = _eager(tmp_path / "m")
    adapter = _adapter(tmp_path / "m")
    ids = _prompt(adapter, 40)
    index = torch.arange(ids.shape[1])[None]
    with torch.no_grad():
        want = eager(ids).logits
        win = adapter.with_attention(build_attention("sliding_window", window=8))
        got = win.logits_at(win.hidden(ids), index)
        full = adapter.with_attention(build_attention("full"))
        wider = full.logits_at(full.hidden(ids), index)
    assert (got - want).abs().max() < 1e-4
    assert (wider - want).abs().max() > 1e-3  # the window matters at 40 tokens


def test_bfloat16_end_to_end_on_cpu(hf_models, write_config, tmp_path):
    adapter = _adapter(hf_models["qwen2"], dtype="bfloat16")
    assert adapter.describe()["dtype"] == "bfloat16"
    model = adapter.with_attention(build_attention("flash"))
    with torch.no_grad():
        h = model.hidden(_prompt(adapter, 16))
    assert h.dtype == torch.bfloat16 and torch.isfinite(h).all()
    cfg = {"run": {"name": "bf16", "seed": 0},
           "models": {"q": {"type": "hf", "path": str(hf_models["qwen2"]), "dtype": "bfloat16"}},
           "pairings": [{"model": "q", "attention": ["flash", {"name": "sliding_window", "window": 16}]}],
           "tasks": {"niah": {"lengths": [96], "depths": [0.5], "samples": 2}}}
    res = CliRunner().invoke(main, ["run", str(write_config(cfg)), "--out", str(tmp_path / "r"), "--no-progress"])
    assert res.exit_code == 0, res.output
    rows = read_rows(tmp_path / "r")
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}


def test_run_grid_on_hf_models(hf_models, write_config, tmp_path):
    """lceval run over a rotary and a learned-position model: every variant runs, positions are reported,
    GPT-2 past its 128-row table is recorded unsupported_length, not scored."""
    cfg = {
        "run": {"name": "hf", "seed": 0, "batch_size": 4},
        "models": {"llama": {"type": "hf", "path": str(hf_models["llama"])},
                   "gpt2": {"type": "hf", "path": str(hf_models["gpt2"])}},
        "pairings": [{"model": ["llama", "gpt2"], "attention": ["full", "flash", {"name": "sliding_window", "window": 32},
                                                              "linear"]}],
        "tasks": {"niah": {"lengths": [96, 192], "depths": [0.0, 1.0], "samples": 2}},
    }
    res = CliRunner().invoke(main, ["run", str(write_config(cfg)), "--out", str(tmp_path / "r"), "--no-progress"])
    assert res.exit_code == 0, res.output
    rows = read_rows(tmp_path / "r")
    assert len(rows) == 2 * 4 * 2 * 2 * 2
    assert {r["position"] for r in rows if r["pairing"].startswith("llama")} == {"rotary"}
    gpt2 = [r for r in rows if r["pairing"].startswith("gpt2")]
    assert {r["status"] for r in gpt2 if r["context_length"] == 192} == {"unsupported_length"}
    assert {r["status"] for r in gpt2 if r["context_length"] == 96} == {"ok"}
    assert {r["status"] for r in rows if r["pairing"].startswith("llama")} == {"ok"}
    full = {r["sample_id"]: r["prediction"] for r in rows if r["pairing"] == "llama/full"}
    assert full == {r["sample_id"]: r["prediction"] for r in rows if r["pairing"] == "llama/flash"}


def test_chat_template_prompts_are_exact(hf_models):
    from lceval.tasks.niah import NeedleInAHaystack, NiahConfig

    adapter = _adapter(hf_models["llama"], chat_template=True)
    tok = adapter.tokenizer
    task = NeedleInAHaystack(NiahConfig(lengths=[128], depths=[0.5], samples=3), seed=0)
    samples = task.cell_samples({"context_length": 128, "depth": 0.5}, tok, 3)
    assert all(len(s.input_ids) == 128 for s in samples)
    assert_chat_exact(tok, samples)
    assert tok.fingerprint() != _adapter(hf_models["llama"]).tokenizer.fingerprint()  # other samples, other cache


@pytest.mark.parametrize("case,want", [
    ({"type": "hf"}, "path: required key is missing"),
    ({"type": "hf", "path": "nowhere"}, "no model directory"),
    ({"type": "module", "factory": "no_such_pkg.mod:build"}, "cannot import"),
    ({"type": "module", "factory": "not a ref"}, "package.module:callable"),
    ({"type": "reference", "checkpoint": "zoo:quickstart-rotary", "rope": {"theta": 1e6}}, "hf models only"),
    ({"type": "reference", "checkpoint": "zoo:quickstart-rotary", "device": "tpu"}, "device"),
] + ([] if torch.cuda.is_available() else [
    ({"type": "reference", "checkpoint": "zoo:quickstart-rotary", "device": "cuda"}, "no CUDA device is visible")]))
def test_model_config_errors(case, want, write_config, tmp_path):
    cfg = small_config(Path("x"))
    cfg["models"] = {"m": case}
    res = CliRunner().invoke(main, ["run", str(write_config(cfg)), "--out", str(tmp_path / "r"), "--dry-run"])
    assert res.exit_code == 2 and want in res.output and "models.m" in res.output, res.output


def test_pickled_weights_are_refused_never_loaded(hf_models, write_config, tmp_path):
    bad = tmp_path / "pickled"
    bad.mkdir()
    (bad / "config.json").write_text((hf_models["llama"] / "config.json").read_text())
    (bad / "pytorch_model.bin").write_bytes(b"not a pickle: loading it would fail differently")
    cfg = small_config(Path("x"))
    cfg["models"] = {"m": {"type": "hf", "path": str(bad)}}
    res = CliRunner().invoke(main, ["run", str(write_config(cfg)), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "never unpickles" in res.output and "safe_serialization=True" in res.output
    assert not (tmp_path / "r").exists()


def test_missing_tokenizer_is_a_clear_error(hf_models, write_config, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((hf_models["llama"] / name).read_bytes())
    cfg = small_config(Path("x"))
    cfg["models"] = {"m": {"type": "hf", "path": str(bare)}}
    res = CliRunner().invoke(main, ["run", str(write_config(cfg)), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "no tokenizer" in res.output and "models.m.path" in res.output, res.output


def test_models_with_biases_in_the_mask_are_refused(hf_models, write_config, tmp_path):
    bloom = tmp_path / "bloom"
    bloom.mkdir()
    (bloom / "config.json").write_text('{"model_type": "bloom"}')
    (bloom / "model.safetensors").write_bytes(b"")
    cfg = small_config(Path("x"))
    cfg["models"] = {"m": {"type": "hf", "path": str(bloom)}}
    res = CliRunner().invoke(main, ["run", str(write_config(cfg)), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "ALiBi" in res.output and "models.m.path" in res.output


@pytest.mark.parametrize("cacheless", [False, True])
def test_user_module_scores_like_the_reference_model(cacheless, quickstart_rotary, write_config, tmp_path,
                                                     monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "fixtures"))
    sys.modules.pop("tiny_module", None)
    cfg = small_config(quickstart_rotary)
    cfg["models"]["mod"] = {"type": "module", "factory": "tiny_module:build",
                            "options": {"checkpoint": str(quickstart_rotary), "cacheless": cacheless}}
    cfg["pairings"] = [{"model": ["m", "mod"], "attention": ["flash"]}]
    cfg["run"]["answer"] = "generate"
    res = CliRunner().invoke(main, ["run", str(write_config(cfg)), "--out", str(tmp_path / "r"), "--no-progress"])
    assert res.exit_code == 0, res.output
    rows = read_rows(tmp_path / "r")
    ref = {r["sample_id"]: r["prediction"] for r in rows if r["pairing"] == "m/flash"}
    mod = {r["sample_id"]: r["prediction"] for r in rows if r["pairing"] == "mod/flash"}
    assert len(ref) == 18 and ref == mod
    assert {r["position"] for r in rows if r["pairing"] == "mod/flash"} == {"rotary"}


def test_alignment_on_your_own_parallel_text_with_an_hf_model(hf_models, write_config, tmp_path):
    """Parallel files + Pharaoh gold, a byte-level BPE that splits words (spans through its offsets), attention
    captured inside a transformers model per layer and head; full and flash give the same links."""
    from conftest import ROOT

    data = ROOT / "tests" / "fixtures" / "parallel"
    cfg = {"run": {"name": "byod", "seed": 0, "batch_size": 2},
           "models": {"llama": {"type": "hf", "path": str(hf_models["llama"])}},
           "pairings": [{"model": "llama", "attention": ["full", "flash"]}],
           "tasks": {"alignment": {"lengths": [64, 160], "depths": [0.0, 1.0], "samples": 2,
                                   "data": {"source": str(data / "en.txt"), "target": str(data / "fr.txt"),
                                            "gold": str(data / "en-fr.gold")}}}}
    res = CliRunner().invoke(main, ["run", str(write_config(cfg)), "--out", str(tmp_path / "r"), "--no-progress"])
    assert res.exit_code == 0, res.output
    rows = read_rows(tmp_path / "r")
    assert len(rows) == 2 * 2 * 2 * 2 * 2 and {r["status"] for r in rows} == {"ok"}
    english = {line.split() and tuple(line.split()) for line in (data / "en.txt").read_text().splitlines()}
    for r in rows:
        assert tuple(r["meta"]["source_words"]) in english
        assert set(r["meta"]["aer_counts"]) == {f"L{layer}H{h}" for layer in range(2) for h in range(4)} | {"mean"}
        assert len(r["meta"]["links"]["mean"]) == len(r["meta"]["target_words"])
    full = {r["sample_id"]: r["meta"]["links"] for r in rows if r["attention"] == "full"}
    assert full == {r["sample_id"]: r["meta"]["links"] for r in rows if r["attention"] == "flash"}
    assert (tmp_path / "r" / "report" / "alignment_heads.csv").exists()


def _damage(case: str, src: Path, dst: Path) -> Path:
    """A copy of a saved model with one fault (the faults a careless or hostile user's directory has)."""
    import json
    import os
    import shutil

    from safetensors.torch import load_file, save_file

    if case == "dir_symlink_loop":
        os.symlink(dst.parent / "loop2", dst)
        os.symlink(dst, dst.parent / "loop2")
        return dst
    shutil.copytree(src, dst)
    weights, config = dst / "model.safetensors", dst / "config.json"
    if case == "weights_missing_shard":
        from transformers import AutoModelForCausalLM

        weights.unlink()
        AutoModelForCausalLM.from_pretrained(src).save_pretrained(dst, max_shard_size="40KB")
        sorted(dst.glob("model-*.safetensors"))[1].unlink()
        return dst

    def tensors(edit):
        t = load_file(weights)
        edit(t)
        save_file(t, weights, metadata={"format": "pt"})

    def set_config(**kw):
        c = json.loads(config.read_text())
        c.update(kw)
        config.write_text(json.dumps(c))

    down = "model.layers.1.mlp.down_proj.weight"
    {
        "config_garbage": lambda: config.write_text("{garbage"),
        "config_empty": lambda: config.write_text(""),
        "config_array": lambda: config.write_text("[1, 2]"),
        "config_no_model_type": lambda: config.write_text(json.dumps(
            {k: v for k, v in json.loads(config.read_text()).items() if k != "model_type"})),
        "config_symlink_loop": lambda: (config.unlink(), os.symlink(dst / "c2.json", config),
                                        os.symlink(config, dst / "c2.json")),
        "weights_truncated": lambda: weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2]),
        "weights_not_safetensors": lambda: weights.write_bytes(b"PK\x03\x04 a zip, not safetensors"),
        "weights_reshaped": lambda: tensors(lambda t: t.update({down: t[down][:, :32].contiguous()})),
        "weights_missing": lambda: tensors(lambda t: t.pop(down)),
        "weights_unexpected": lambda: tensors(lambda t: t.update({"model.layers.1.extra.weight": torch.zeros(3)})),
        "tokenizer_missing": lambda: (dst / "tokenizer.json").unlink(),
        "tokenizer_garbage": lambda: (dst / "tokenizer.json").write_text("{garbage"),
        "custom_code_untrusted": lambda: (set_config(model_type="custom_llama", auto_map={
            "AutoConfig": "custom_model.CustomConfig", "AutoModelForCausalLM": "custom_model.CustomModel"}),
            (dst / "custom_model.py").write_text("raise SystemExit('remote code ran')\n")),
    }[case]()
    return dst


@pytest.mark.parametrize("case,want", [
    ("config_garbage", "config.json is not valid JSON"),
    ("config_empty", "config.json is not valid JSON"),
    ("config_array", "config.json holds a JSON list, not an object"),
    ("config_no_model_type", "config.json has no model_type"),
    ("config_symlink_loop", "config.json is a symlink loop"),
    ("dir_symlink_loop", "is a symlink loop"),
    ("weights_truncated", "model.safetensors is not a readable safetensors file"),
    ("weights_not_safetensors", "model.safetensors is not a readable safetensors file"),
    ("weights_reshaped", "wrong shape: model.layers.1.mlp.down_proj.weight (64, 32) where the config needs (64, 128)"),
    ("weights_missing", "missing: model.layers.1.mlp.down_proj.weight"),
    ("weights_unexpected", "unexpected: model.layers.1.extra.weight"),
    ("weights_missing_shard", "weight shards its index names (model-00002-of-"),
    ("tokenizer_missing", "holds no tokenizer"),
    ("tokenizer_garbage", "tokenizer.json is not valid JSON"),
    ("custom_code_untrusted", "runs only with trust_remote_code: true"),
])
def test_damaged_model_directories_are_one_line_errors(case, want, hf_models, write_config, tmp_path):
    """Each fault ends in one line naming the key path and the file, exit 2, never random weights or a traceback,
    and no run directory is left behind by a refusal."""
    bad = _damage(case, hf_models["llama"], tmp_path / case)
    cfg = {"run": {"name": "hf", "seed": 0}, "models": {"m": {"type": "hf", "path": str(bad)}},
           "pairings": [{"model": "m", "attention": "flash"}],
           "tasks": {"niah": {"lengths": [160], "depths": [0.5], "samples": 1}}}
    res = CliRunner().invoke(main, ["run", str(write_config(cfg)), "--out", str(tmp_path / "r"), "--no-progress"])
    assert res.exit_code == 2 and want in res.stderr and res.stderr.startswith("error: models.m"), res.output
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.output
    assert not read_rows(tmp_path / "r") if (tmp_path / "r").exists() else True


def test_remote_code_and_templates_are_in_the_model_hash(hf_models, tmp_path):
    import shutil

    from lceval.models.hf import weights_hash

    model = tmp_path / "m"
    shutil.copytree(hf_models["llama"], model)
    (model / "custom_model.py").write_text("X = 1\n")
    before = weights_hash(model)
    (model / "custom_model.py").write_text("X = 2\n")  # the code transformers would execute changed
    middle = weights_hash(model)
    (model / "chat_template.jinja").write_text("{{ messages }}")
    assert len({before, middle, weights_hash(model)}) == 3


def test_a_chat_template_that_is_missing_names_its_key(hf_models, write_config, tmp_path):
    import json
    import shutil

    model = tmp_path / "m"
    shutil.copytree(hf_models["llama"], model)
    cfg_file = model / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_file.read_text())
    tok_cfg.pop("chat_template", None)
    cfg_file.write_text(json.dumps(tok_cfg))
    (model / "chat_template.jinja").unlink(missing_ok=True)
    cfg = {"run": {"name": "hf", "seed": 0}, "models": {"m": {"type": "hf", "path": str(model), "chat_template": True}},
           "pairings": [{"model": "m", "attention": "flash"}],
           "tasks": {"niah": {"lengths": [160], "depths": [0.5], "samples": 1}}}
    res = CliRunner().invoke(main, ["run", str(write_config(cfg)), "--out", str(tmp_path / "r"), "--no-progress"])
    assert res.exit_code == 2 and res.stderr.startswith("error: models.m.chat_template: the model's tokenizer has no"), \
        res.output


@pytest.mark.parametrize("family", FAMILIES)
def test_gated_mlps_and_rms_norms_run_lean_with_the_same_values(family, hf_models):
    """lceval's loader rebinds Llama-style gated MLPs and RMS norms to allocate less: every layer's MLP and
    both norms, and the final norm, of Llama, Mistral and Qwen2; nothing of GPT-2's (no gate, LayerNorm). The
    hidden states equal transformers' own forward bit for bit, and so do the gradients through each kind."""
    from transformers import AutoModelForCausalLM

    from lceval.models.hf_lean import lean_modules

    adapter = _adapter(hf_models[family])
    plain = AutoModelForCausalLM.from_pretrained(hf_models[family]).eval()
    layers = 0 if family == "gpt2" else plain.config.num_hidden_layers
    lean = {kind: [m for m in adapter.lm.modules() if getattr(m, "_lceval_lean", None) == kind and "forward" in vars(m)]
            for kind in ("mlp", "norm")}
    assert {k: len(v) for k, v in lean.items()} == {"mlp": layers, "norm": 2 * layers + (layers > 0)}
    assert lean_modules(adapter.lm) == {"mlp": 0, "norm": 0, "linear": 0}  # already rebound: nothing twice
    for kind in ("mlp", "norm") if layers else ():
        module = lean[kind][0]
        x = torch.randn(1, 5, plain.config.hidden_size, requires_grad=True)
        module(x).sum().backward()  # autograd follows the in-place operations
        own = plain.get_submodule(next(n for n, m in adapter.lm.named_modules() if m is module))
        x2 = x.detach().clone().requires_grad_()
        own(x2).sum().backward()
        assert torch.equal(x.grad, x2.grad), kind
    model = adapter.with_attention(build_attention("flash"))
    ids = _prompt(adapter, 24)
    with torch.no_grad():
        got = model.hidden(ids)
        for m in lean["mlp"] + lean["norm"]:
            del m.forward  # transformers' own modules again
        want = model.hidden(ids)
    assert torch.equal(got, want)


def test_a_long_input_runs_the_mlp_in_equal_blocks(hf_models):
    """Past ``_lceval_chunk`` tokens the MLP runs in equal blocks (no short remainder) and gives the whole
    product's values: 50 tokens at blocks of at most 16 are 4 calls of 13, 13, 13 and 11 rows."""
    adapter = _adapter(hf_models["llama"])
    mlp = next(m for m in adapter.lm.modules() if getattr(m, "_lceval_lean", None) == "mlp")
    # in float64: float32 blocks of 13 rows take another BLAS path than 50 rows and may round differently
    # (1.3e-7 seen in CI); float64 rounding is far below the tolerance, a row in the wrong place far above it
    mlp = copy.deepcopy(mlp).double()
    x = torch.randn(2, 25, adapter.lm.config.hidden_size, dtype=torch.float64)
    with torch.no_grad():
        whole = mlp(x)
        rows = []
        handle = mlp.gate_proj.register_forward_hook(lambda _m, args, _out: rows.append(args[0].shape[0]))
        mlp._lceval_chunk = 16
        blocks = mlp(x)
        handle.remove()
    assert rows == [13, 13, 13, 11]
    assert blocks.shape == whole.shape
    torch.testing.assert_close(blocks, whole, rtol=0, atol=1e-12)


def test_the_output_head_runs_weight_major_with_the_same_values():
    """``head_logits``: W @ x^T for a plain linear head (faster for a few decoding rows, benchmarks/head.py) gives
    nn.Linear's logits, bias included, for 1 to 20 rows and any leading shape; the same bits for one row (a batch
    of one decodes as transformers' generate does); a head of another kind runs its own forward."""
    from lceval.models.hf import head_logits

    g = torch.Generator().manual_seed(0)
    for bias in (False, True):
        head = torch.nn.Linear(96, 1000, bias=bias)
        with torch.no_grad():
            for rows in (1, 2, 3, 4, 7, 8, 16, 20):
                x = torch.randn(rows, 1, 96, generator=g)
                got, want = head_logits(head, x), head(x)
                assert got.shape == want.shape == (rows, 1, 1000) and got.is_contiguous()
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
                if rows == 1:
                    assert torch.equal(got, want)
            x = torch.randn(2, 3, 96, generator=g)  # teacher forcing: several positions per row
            torch.testing.assert_close(head_logits(head, x), head(x), rtol=1e-5, atol=1e-5)

    class Scaled(torch.nn.Linear):  # a subclass may compute something else: its forward runs
        def forward(self, x):
            return 2 * super().forward(x)

    scaled = Scaled(96, 10)
    x = torch.randn(3, 1, 96, generator=g)
    with torch.no_grad():
        assert torch.equal(head_logits(scaled, x), scaled(x))


def test_blocks_of_a_real_sized_mlp_give_the_same_bits():
    """The claim in ``lceval.models.hf_lean``: with torch's MKL, each row of a SmolLM2-sized MLP (576 -> 1536)
    is the same bits in blocks of ``CHUNK_TOKENS`` as in one product over all the rows, at batch-prefill sizes
    that split into 2, 3 and 6 blocks."""
    from lceval.models.hf_lean import CHUNK_TOKENS, lean_modules

    class MLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_proj = torch.nn.Linear(576, 1536, bias=False)
            self.up_proj = torch.nn.Linear(576, 1536, bias=False)
            self.down_proj = torch.nn.Linear(1536, 576, bias=False)
            self.act_fn = torch.nn.SiLU()

        def forward(self, x):
            return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))

    torch.manual_seed(0)
    mlp = MLP()
    assert lean_modules(mlp) == {"mlp": 1, "norm": 0, "linear": 3}
    with torch.no_grad():
        for rows in (CHUNK_TOKENS + 1, 3 * CHUNK_TOKENS - 5, 12176):
            x = torch.randn(4, rows // 4, 576)
            assert torch.equal(mlp(x), MLP.forward(mlp, x)), rows


def test_an_mlp_or_norm_that_computes_something_else_keeps_its_own_forward():
    """The usual part names are not enough: an MLP whose forward differs from ``down(act(gate(x)) * up(x))``, or
    an RMS norm that scales by ``1 + weight`` (Gemma's), on a random input is left as it is."""
    from lceval.models.hf_lean import lean_modules

    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_proj, self.up_proj = torch.nn.Linear(8, 16), torch.nn.Linear(8, 16)
            self.down_proj, self.act_fn = torch.nn.Linear(16, 8), torch.nn.SiLU()

        def forward(self, x):
            return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x)) * 0.5

    class Plain(Scaled):
        def forward(self, x):
            return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))

    class OffsetRMSNorm(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight, self.variance_epsilon = torch.nn.Parameter(torch.randn(8)), 1e-6

        def forward(self, x):
            return (1 + self.weight) * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    class PlainRMSNorm(OffsetRMSNorm):
        def forward(self, x):
            return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    model = torch.nn.Sequential(Scaled(), Plain(), OffsetRMSNorm(), PlainRMSNorm())
    assert lean_modules(model) == {"mlp": 1, "norm": 1, "linear": 6}
    assert [("forward" in vars(m)) for m in model] == [False, True, False, True]


def test_linear_layers_at_decoding_sizes_run_weight_major(monkeypatch):
    """A plain float32 ``nn.Linear`` is rebound: 2 to ``FEW_ROWS`` rows (a decoding step of a small batch) go
    through ``W @ x^T`` and give nn.Linear's values; one row and more rows than that run nn.Linear's own product,
    the same bits; bias and leading shapes as nn.Linear's. A subclass and a float64 layer keep their forward."""
    import lceval.models.hf_lean as lean

    class Scaled(torch.nn.Linear):  # a subclass may compute something else
        def forward(self, x):
            return 2 * super().forward(x)

    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(96, 200), torch.nn.Linear(200, 96, bias=False), Scaled(96, 10),
                                torch.nn.Linear(96, 5).double())
    assert lean.lean_modules(model) == {"mlp": 0, "norm": 0, "linear": 2}
    assert [("forward" in vars(m)) for m in model] == [True, True, False, False]
    own, used = lean.weight_major, []

    def spy(lin, x):
        used.append(x.shape)
        return own(lin, x)

    monkeypatch.setattr(lean, "weight_major", spy)
    with torch.no_grad():
        for lin in model[:2]:
            for shape in [(1, 1), (2, 1), (3, 1), (1, 4), (2, 2), (5, 1), (8, 1), (3, 7)]:
                x = torch.randn(*shape, lin.in_features, generator=g)
                used.clear()
                got, want = lin(x), torch.nn.functional.linear(x, lin.weight, lin.bias)
                assert got.shape == want.shape and got.is_contiguous()
                rows = shape[0] * shape[1]
                assert bool(used) == (2 <= rows <= lean.FEW_ROWS), shape
                if used:
                    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
                else:
                    assert torch.equal(got, want), shape


@pytest.mark.parametrize("name", ["full", "flash", "sliding_window"])
def test_decoding_with_the_evidence_capture_takes_each_step_from_its_weights(name, hf_models, monkeypatch):
    """With the diagnosis' capture attached, each decoding step of an exact variant takes its output from the
    weights the capture computed (one read of the keys, not two): the tokens are those generated without a
    capture, and every layer of every step went that way; a window computes its own steps."""
    from lceval.diagnosis import EvidenceCapture

    adapter = _adapter(hf_models["llama"])
    attention = build_attention(name, **({"window": 8} if name == "sliding_window" else {}))
    model = adapter.with_attention(attention)
    ids = _prompt(adapter, 20)
    want = greedy_generate(model, ids, 10, stop_ids=[])[0].tokens
    taken = []
    own = attention.from_weights

    def spy(w, v):
        out = own(w, v)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(attention, "from_weights", spy)
    model.capture = EvidenceCapture(torch.zeros(1, ids.shape[1], dtype=torch.bool), [ids.shape[1] - 1])
    try:
        got = greedy_generate(model, ids, 10, stop_ids=[])[0].tokens
    finally:
        model.capture = None
    assert got == want and len(got) == 10
    layers = adapter.lm.config.num_hidden_layers
    assert taken == [name != "sliding_window"] * (9 * layers)  # 9 steps after the prompt's pass
