"""Scoring through the task: teacher forcing equals generation on a trained model; training is deterministic."""

from __future__ import annotations

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
