"""Scoring through the task: teacher forcing equals generation on a trained model; training is deterministic."""

from __future__ import annotations

import pytest
import torch

from lceval.models.checkpoint import load_checkpoint
from lceval.scoring import score_batch


def test_trained_model_teacher_forcing_equals_generation(quickstart_rotary):
    from lceval.tasks.niah import NeedleInAHaystack, NiahConfig

    model, tok, _ = load_checkpoint(quickstart_rotary)
    task = NeedleInAHaystack(NiahConfig(lengths=[200], depths=[0.0, 0.5, 1.0], samples=8), seed=5)
    samples = task.samples(tok)
    tf = score_batch(model, task, samples, tok)
    gen = score_batch(model, task, samples, tok, mode="generate")
    assert {s.mode for s in tf} == {"teacher_forcing"} and {s.mode for s in gen} == {"generate"}
    assert [s.score for s in tf] == [s.score for s in gen]
    assert any(s.score == 1.0 for s in tf)  # the trained model finds needles at 200 tokens
    for s, t, g in zip(samples, tf, gen, strict=True):
        assert g.prediction == (s.references[0] if g.score == 1.0 else g.prediction)
        if t.score == 1.0:
            assert t.prediction == g.prediction == s.references[0]


def test_training_is_deterministic_from_its_seed(tmp_path):
    from safetensors.torch import load_file

    from lceval.config import TrainRecipe
    from lceval.train import train

    recipe = TrainRecipe(d_model=16, n_layers=1, steps=5, batch_size=4, eval_samples=8, seed=7)
    cards = [train(recipe, tmp_path / name, progress=False) for name in ("a", "b")]
    wa, wb = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert cards[0]["measured"] == cards[1]["measured"]
    assert cards[0]["measured"]["seed"] != recipe.seed  # measured on fresh samples, not the evaluation's seed
    train(recipe.model_copy(update={"seed": 8}), tmp_path / "c", progress=False)
    wc = load_file(str(tmp_path / "c" / "model.safetensors"))
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


@pytest.mark.parametrize("attention", [("full", {}), ("flash", {}), ("sliding_window", {"window": 64}),
                                       ("sparse", {"block": 32, "local_blocks": 2}), ("linear", {})],
                         ids=lambda a: a[0])
def test_stopping_once_decided_scores_as_the_whole_budget(attention):
    """Generation that stops once the score is decided gives every sample the score of full-budget generation,
    for each metric (string_match_all, string_match_part, exact_match) and variant; its tokens are a prefix."""
    from lceval import registry
    from lceval.attention import build_attention
    from lceval.config import validate_task_config
    from lceval.models.checkpoint import zoo_path

    model, tok, _ = load_checkpoint(zoo_path("zoo:ruler-mixture"))
    model.set_attention(build_attention(attention[0], **attention[1]))
    multivalue = registry.tasks.get("niah_multivalue")
    part = type("multivalue_part", (multivalue,), {"name": "multivalue_part", "metric": "string_match_part"})
    tasks = [cls(validate_task_config(cls, {"lengths": [160], "depths": [0.0, 1.0], "samples": 3}, "t"), seed=3)
             for cls in (registry.tasks.get("niah_single_2"), multivalue, part)]
    quick, _ = _quickstart_niah()
    reasons = set()
    for task, tokenizer, m in [(t, tok, model) for t in tasks] + [(quick, _quickstart_niah()[1], None)]:
        if m is None:
            m, tokenizer, _ = load_checkpoint(zoo_path("zoo:quickstart-rotary"))
            m.set_attention(build_attention(attention[0], **attention[1]))
        samples = task.samples(tokenizer)
        early = score_batch(m, task, samples, tokenizer, mode="generate")
        whole = score_batch(m, task, samples, tokenizer, mode="full")
        assert [e.score for e in early] == [w.score for w in whole], task.name
        for e, w in zip(early, whole, strict=True):
            assert w.answer.tokens[: len(e.answer.tokens)] == e.answer.tokens
            assert w.answer.stop_reason in ("eos", "stop_word", "budget")
            reasons.add(e.answer.stop_reason)
    assert reasons & {"answer_found", "mismatch"}  # the early stop happened, so the comparison means something


def _quickstart_niah():
    from lceval.models.checkpoint import zoo_path
    from lceval.tasks.niah import NeedleInAHaystack, NiahConfig

    _, tok, _ = load_checkpoint(zoo_path("zoo:quickstart-rotary"))
    return NeedleInAHaystack(NiahConfig(lengths=[200], depths=[0.0, 0.5, 1.0], samples=4), seed=5), tok
