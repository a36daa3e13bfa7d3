"""Shipped checkpoints (lceval/zoo): they load by name and reproduce their card's accuracy on fresh samples."""

from __future__ import annotations

import json

import pytest

from lceval.errors import ConfigError
from lceval.models.checkpoint import load_checkpoint, zoo_path
from lceval.resolve import load_config
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


def assert_reproduces(scores: list[float], depths: list[float], measured: dict) -> None:
    """Fresh per-sample scores agree with the card's accuracy within sampling error: 3 standard errors of the
    difference of two means (at least 0.05, so a perfect card still allows a miss or two). One 0/1 label per
    sample: the two-proportion test's pooled variance. Scores that are shares of several labels (mqar's 8
    queries) spread less than one label: the variance within each depth (both draw equal samples per depth)."""
    import math
    import statistics

    n, fresh = len(scores), sum(scores) / len(scores)
    p, m = measured["accuracy"], measured["samples"]
    if set(scores) <= {0.0, 1.0}:
        pooled = (fresh * n + p * m) / (n + m)
        var = pooled * (1 - pooled)
    else:
        by_depth = {d: [s for s, e in zip(scores, depths, strict=True) if e == d] for d in set(depths)}
        var = statistics.mean(statistics.variance(v) for v in by_depth.values())
    bound = max(0.05, 3 * math.sqrt(var * (1 / n + 1 / m)))
    assert abs(fresh - p) <= bound, (fresh, measured, bound)


def zoo_recipes() -> dict[str, tuple[str, dict]]:
    """Every grid model of the zoo: ``<task>-<model>`` -> (task, the run-config entry that trained it)."""
    import yaml

    from conftest import ROOT

    out = {}
    for task in ("mqar", "induction", "niah"):
        data = yaml.safe_load((ROOT / "configs" / f"zoo_train_{task}.yaml").read_text())
        out.update({f"{task}-{name}": (task, spec) for name, spec in data["models"].items()})
    return out


ZOO = zoo_recipes()


def fresh_task(task: str):
    """The card's cells at the training length with a seed neither the card (1,000,003) nor a run (0) used."""
    from lceval.tasks.niah import NeedleInAHaystack, NiahConfig
    from lceval.tasks.recall import Induction, InductionConfig, Mqar, MqarConfig

    if task == "mqar":
        return Mqar(MqarConfig(lengths=[64], depths=[0.0, 0.5, 1.0], samples=24, pairs=8), seed=4242)
    if task == "induction":
        return Induction(InductionConfig(lengths=[64], depths=[0.1, 0.5, 0.9], samples=40), seed=4242)
    return NeedleInAHaystack(NiahConfig(lengths=[128], depths=[0.0, 0.5, 1.0], samples=40), seed=4242)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_models_reproduce_their_cards_and_recipes(name):
    """Each shipped zoo model: its card's recipe is the one its configs/zoo_train_<task>.yaml trains, and fresh
    samples at the training length, scored with the attention variant it trained with, reproduce the card's
    accuracy within sampling error (the models that did not learn stay near their card too)."""
    from lceval.config import model_spec

    task_name, spec = ZOO[name]
    model, tok, card = load_checkpoint(zoo_path(f"zoo:{name}"))
    recipe = model_spec(spec).train
    assert card["recipe"] == recipe.model_dump(mode="json")
    model.set_attention(recipe.attention.build())  # the variant it trained with
    task = fresh_task(task_name)
    samples = task.samples(tok)
    scores = [r.score for r in score_batch(model, task, samples, tok)]
    assert_reproduces(scores, [s.meta["depth"] for s in samples], card["measured"])


def test_the_zoo_report_is_the_shipped_models():
    from conftest import ROOT
    from lceval.models.adapters import content_hash

    models = json.loads((ROOT / "reports" / "zoo" / "models.json").read_text())
    assert sorted(models) == sorted(ZOO)
    for key, m in models.items():
        assert content_hash(zoo_path(f"zoo:{key}")) == m["sha256"], key


def test_the_grid_tables_put_each_pairing_in_its_row_and_column():
    import importlib.util

    import pandas as pd

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("zoo_grid", ROOT / "reports" / "zoo" / "grid.py")
    grid = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(grid)
    summary = pd.DataFrame([
        {"task": "mqar", "pairing": "mqar-rotary-c0/flash", "64": 0.99, "128": 0.4},
        {"task": "mqar", "pairing": "mqar-rotary-c0-linear/linear", "64": 0.13, "128": 0.04},
        {"task": "mqar", "pairing": "mqar-none-c3/sliding_window(w=16)", "64": 0.18, "128": 0.2},
        {"task": "mqar", "pairing": "mqar-rotary-c0-norepeat/flash", "64": 0.26, "128": 0.08},
    ])
    text = grid.tables(summary)
    trained = text.split("### mqar, trained")[1].split("###")[0]
    assert "| position-conv | flash | linear |" in trained and "| rotary-c0 | 99 / 40 | 13 / 4 |" in trained
    swapped = text.split("### mqar, swapped")[1].split("###")[0]
    assert "| none-c3 | 18 / 20 |" in swapped and "rotary-c0" not in swapped
    assert "| mqar-rotary-c0-norepeat/flash | 26 / 8 |" in text.split("### mqar, other models")[1]
