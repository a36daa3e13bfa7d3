"""Shipped checkpoints (lceval/zoo): they load by name and reproduce their card's accuracy on fresh samples."""

from __future__ import annotations

import json

import pytest

from lceval.config import load_config
from lceval.errors import ConfigError
from lceval.models.checkpoint import load_checkpoint, zoo_path
from lceval.scoring import score_batch
from lceval.tasks.niah import NeedleInAHaystack, NiahConfig

SHIPPED = ["quickstart-rotary", "quickstart-sinusoidal"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_reproduces_its_card(name):
    path = zoo_path(f"zoo:{name}")
    model, tok, card = load_checkpoint(path)
    assert card["measured"]["accuracy"] >= 0.99 and card["task_versions"] == {"niah": NeedleInAHaystack.version}
    # fresh samples: a seed neither the card (1,000,003) nor a default run (0) used
    task = NeedleInAHaystack(NiahConfig(lengths=[card["training_length"]], depths=[0.0, 0.5, 1.0], samples=16), seed=4242)
    samples = task.samples(tok)
    scores = [r.score for r in score_batch(model, task, samples, tok)]
    assert sum(scores) / len(scores) >= 0.95, scores


def test_configs_name_shipped_checkpoints(write_config):
    data = {"models": {"m": {"type": "reference", "checkpoint": "zoo:quickstart-rotary"}},
            "pairings": [{"model": "m", "attention": "flash"}],
            "tasks": {"niah": {"lengths": [128], "depths": [0.5], "samples": 1}}}
    resolved = load_config(write_config(data))
    assert resolved.config.models["m"].checkpoint == zoo_path("zoo:quickstart-rotary")
    data["models"]["m"]["checkpoint"] = "zoo:gpt9"
    with pytest.raises(ConfigError, match="models.m.checkpoint: no shipped checkpoint .gpt9.; the zoo has: .*quickstart-rotary"):
        load_config(write_config(data))


def test_the_quickstart_uses_the_shipped_models_and_documents_their_recipes():
    from conftest import QUICKSTART

    text = QUICKSTART.read_text()
    for name, position, steps in [("quickstart-rotary", "rotary", 1000), ("quickstart-sinusoidal", "sinusoidal", 2500)]:
        assert f"checkpoint: zoo:{name}" in text
        recipe = json.loads((zoo_path(f"zoo:{name}") / "card.json").read_text())["recipe"]
        assert recipe["position"] == position and recipe["steps"] == steps  # the commented recipe is the card's
        assert f"train: {{position: {position}, attention: flash, train_length: 128, steps: {steps}}}" in text


def test_the_ruler_model_is_the_one_behind_the_committed_report():
    from conftest import ROOT
    from lceval.models.adapters import content_hash

    models = json.loads((ROOT / "reports" / "ruler" / "models.json").read_text())
    assert content_hash(zoo_path("zoo:ruler-mixture")) == models["ruler"]["sha256"]
    card = json.loads((zoo_path("zoo:ruler-mixture") / "card.json").read_text())
    assert card["measured"]["per_task"]["niah_single_1"]["accuracy"] == 1.0


def assert_reproduces(fresh: float, n: int, measured: dict) -> None:
    """Fresh samples (one 0/1 label each) agree with the card within sampling error: 3 standard errors of the
    difference of two proportions (at least 0.05, so a perfect card still allows a miss or two)."""
    import math

    p = measured["accuracy"]
    bound = max(0.05, 3 * math.sqrt(max(p * (1 - p), 0.01) * (1 / n + 1 / measured["samples"])))
    assert abs(fresh - p) <= bound, (fresh, measured, bound)


MQAR = [f"mqar-{p}-c{c}" for c in (0, 3) for p in ("none", "sinusoidal", "learned", "rotary", "alibi")]


@pytest.mark.parametrize("name", MQAR)
def test_zoo_mqar_models_reproduce_their_cards_and_recipes(name):
    """Each shipped mqar model: its card's recipe is the one configs/zoo_train.yaml trains, and fresh samples at the
    training length score what the card measured (the models that did not learn stay near their card too)."""
    import yaml

    from conftest import ROOT
    from lceval.config import ModelSpec
    from lceval.tasks.recall import Mqar, MqarConfig

    path = zoo_path(f"zoo:{name}")
    model, tok, card = load_checkpoint(path)
    pos, conv = name.removeprefix("mqar-").rsplit("-c", 1)
    data = yaml.safe_load((ROOT / "configs" / "zoo_train.yaml").read_text())
    recipe = ModelSpec(**data["models"][f"{pos}-c{conv}"]).train.model_dump(mode="json")
    assert card["recipe"] == recipe
    task = Mqar(MqarConfig(lengths=[64], depths=[0.0, 0.5, 1.0], samples=24, pairs=8), seed=4242)
    samples = task.samples(tok)
    fresh = sum(r.score for r in score_batch(model, task, samples, tok)) / len(samples)
    assert abs(fresh - card["measured"]["accuracy"]) < 0.08, (fresh, card["measured"])


INDUCTION = [f"induction-{p}-c{c}" for c in (0, 3) for p in ("none", "sinusoidal", "learned", "rotary", "alibi")] + [
    f"induction-rotary-c0-{kind}" for kind in ("norepeat", "window", "sparse", "linear")]


@pytest.mark.parametrize("name", INDUCTION)
def test_zoo_induction_models_reproduce_their_cards_and_recipes(name):
    """Each shipped induction model: its card's recipe is the one configs/zoo_train_induction.yaml trains, and
    fresh samples at the training length (another seed than the card's) reproduce the card within sampling error."""
    import yaml

    from conftest import ROOT
    from lceval.config import ModelSpec
    from lceval.tasks.recall import Induction, InductionConfig

    path = zoo_path(f"zoo:{name}")
    model, tok, card = load_checkpoint(path)
    data = yaml.safe_load((ROOT / "configs" / "zoo_train_induction.yaml").read_text())
    recipe = ModelSpec(**data["models"][name.removeprefix("induction-")]).train
    assert card["recipe"] == recipe.model_dump(mode="json")
    model.attention = recipe.attention.build()  # the variant it trained with
    task = Induction(InductionConfig(lengths=[64], depths=[0.1, 0.5, 0.9], samples=40), seed=4242)
    samples = task.samples(tok)
    fresh = sum(r.score for r in score_batch(model, task, samples, tok)) / len(samples)
    assert_reproduces(fresh, len(samples), card["measured"])


NIAH = [f"niah-{p}-c{c}" for c in (0, 3) for p in ("none", "sinusoidal", "learned", "rotary", "alibi")]


@pytest.mark.parametrize("name", NIAH)
def test_zoo_niah_models_reproduce_their_cards_and_recipes(name):
    """Each shipped needle model: its card's recipe is the one configs/zoo_train_niah.yaml trains, and fresh samples
    at the training length (another seed than the card's) reproduce the card within sampling error."""
    import yaml

    from conftest import ROOT
    from lceval.config import ModelSpec
    from lceval.tasks.niah import NeedleInAHaystack, NiahConfig

    model, tok, card = load_checkpoint(zoo_path(f"zoo:{name}"), "flash")
    data = yaml.safe_load((ROOT / "configs" / "zoo_train_niah.yaml").read_text())
    assert card["recipe"] == ModelSpec(**data["models"][name.removeprefix("niah-")]).train.model_dump(mode="json")
    task = NeedleInAHaystack(NiahConfig(lengths=[128], depths=[0.0, 0.5, 1.0], samples=40), seed=4242)
    samples = task.samples(tok)
    fresh = sum(r.score for r in score_batch(model, task, samples, tok)) / len(samples)
    assert_reproduces(fresh, len(samples), card["measured"])


def test_the_zoo_report_is_the_shipped_models():
    from conftest import ROOT
    from lceval.models.adapters import content_hash

    models = json.loads((ROOT / "reports" / "zoo" / "models.json").read_text())
    assert sorted(models) == sorted(MQAR + INDUCTION + NIAH)
    for key, m in models.items():
        assert content_hash(zoo_path(f"zoo:{key}")) == m["sha256"], key
