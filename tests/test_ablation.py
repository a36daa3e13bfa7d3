"""Head ablation: zeroing a head's attention output is exactly removing its slice of the output projection
(reference and Hugging Face models, every variant); nothing ablated is bit-identical; heads chosen from an
earlier run's retrieval ranking, at random, or listed."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from test_hf import hf_models  # noqa: F401  (the tiny random Llama fixture)

from conftest import small_config
from lceval.attention import build_attention
from lceval.cli import main
from lceval.models.checkpoint import load_checkpoint, zoo_path
from lceval.store import read_rows

VARIANTS = {"full": {}, "flash": {}, "sliding_window": {"window": 9},
            "sparse": {"block": 8, "local_blocks": 2, "global_blocks": 1}, "linear": {}}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_ablating_a_head_zeroes_exactly_its_contribution_reference(name):
    model, tok, _ = load_checkpoint(zoo_path("zoo:quickstart-rotary"))
    model.set_attention(build_attention(name, **VARIANTS[name]))
    ids = torch.randint(4, 60, (2, 57), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = model.hidden(ids)
        model.set_ablation([])
        assert torch.equal(model.hidden(ids), plain)  # nothing ablated: bit-identical
        model.set_ablation([(1, 0)])
        ablated = model.hidden(ids)
        model.set_ablation([])
        attn = model.blocks[1].attn
        w = attn.out.weight.data.clone()
        attn.out.weight.data[:, : attn.dh] = 0  # head 0's columns of layer 1's output projection
        want = model.hidden(ids)
        attn.out.weight.data.copy_(w)
    assert not torch.allclose(ablated, plain, atol=1e-3)
    assert torch.allclose(ablated, want, atol=1e-5)


def test_ablating_a_head_zeroes_exactly_its_contribution_hf(hf_models):  # noqa: F811
    from lceval.config import HFSpec
    from lceval.models.hf import HFAdapter

    adapter = HFAdapter(HFSpec(type="hf", path=hf_models["llama"]), progress=False)
    adapter.prepare()
    model = adapter.with_attention(build_attention("flash"))
    ids = torch.randint(4, 300, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = model.hidden(ids)
        model.set_ablation([(0, 3)])
        ablated = model.hidden(ids)
        model.set_ablation([])
        assert torch.equal(model.hidden(ids), plain)
        o = adapter.lm.model.layers[0].self_attn.o_proj
        dh = o.weight.shape[1] // adapter.n_heads
        w = o.weight.data.clone()
        o.weight.data[:, 3 * dh : 4 * dh] = 0
        want = model.hidden(ids)
        o.weight.data.copy_(w)
    assert not torch.allclose(ablated, plain, atol=1e-3)
    assert torch.allclose(ablated, want, atol=1e-5)


@pytest.fixture(scope="module")
def ranked_run(quickstart_rotary, tmp_path_factory):
    """A run whose report ranks the quickstart model's heads."""
    import yaml

    tmp = tmp_path_factory.mktemp("ranked")
    cfg = small_config(quickstart_rotary)
    cfg["pairings"] = [{"model": "m", "attention": "flash"}]
    cfg["tasks"] = {"niah": {"lengths": [128, 256], "depths": [0.0, 1.0], "samples": 3}}
    (tmp / "c.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(main, ["run", str(tmp / "c.yaml"), "--out", str(tmp / "r"), "--no-progress"])
    assert res.exit_code == 0, res.output
    return tmp / "r"


def test_ablation_pairings_from_a_ranking_and_at_random(quickstart_rotary, ranked_run, write_config, tmp_path):
    import pandas as pd

    ranking = pd.read_csv(ranked_run / "report" / "retrieval_heads.csv").sort_values(
        ["score", "layer", "head"], ascending=[False, True, True], kind="stable")
    best = (int(ranking.iloc[0]["layer"]), int(ranking.iloc[0]["head"]))
    cfg = small_config(quickstart_rotary)
    cfg["tasks"] = {"niah": {"lengths": [128, 256], "depths": [0.0, 1.0], "samples": 3}}
    cfg["pairings"] = [{"model": "m", "attention": "flash"},
                       {"model": "m", "attention": "flash", "ablate": {"top_retrieval": 1, "from": str(ranked_run)}},
                       {"model": "m", "attention": "flash", "ablate": {"random": 1, "seed": 3, "exclude_top": 1,
                                                                       "from": str(ranked_run)}},
                       {"model": "m", "attention": "flash", "ablate": {"heads": [[0, 0], [0, 1], [1, 0], [1, 1]]}}]
    res = CliRunner().invoke(main, ["run", str(write_config(cfg)), "--out", str(tmp_path / "r"), "--no-progress"])
    assert res.exit_code == 0, res.output
    rows = read_rows(tmp_path / "r")
    labels = {r["pairing"] for r in rows}
    assert labels == {"m/flash", "m/flash ablate(top1)", "m/flash ablate(random1,s3,not-top1)",
                      "m/flash ablate(L0H0,L0H1,L1H0,L1H1)"}
    ident = json.loads((tmp_path / "r" / "manifest.json").read_text())["identity"]["ablations"]
    assert ident["m/flash ablate(top1)"] == [list(best)]
    assert ident["m/flash ablate(random1,s3,not-top1)"] != [list(best)]
    score = {p: sum(r["score"] for r in rows if r["pairing"] == p) / 12 for p in labels}
    assert score["m/flash ablate(L0H0,L0H1,L1H0,L1H1)"] < score["m/flash"]  # no attention left: the needle is lost
    plain = {r["sample_id"]: r["prediction"] for r in rows if r["pairing"] == "m/flash"}
    ranked = {r["sample_id"]: r["prediction"] for r in read_rows(ranked_run)}
    assert plain == ranked  # the unablated pairing is the run it was ranked from


@pytest.mark.parametrize("ablate,want", [
    ({"heads": [[5, 0]]}, "L5H0 is not a head of m (2 layers x 2 heads"),
    ({"top_retrieval": 2}, "top_retrieval needs from"),
    ({"top_retrieval": 2, "from": "/nowhere"}, "retrieval_heads.csv not found"),
    ({"random": 2, "heads": [[0, 0]]}, "exactly one of heads, top_retrieval or random"),
])
def test_ablation_errors_are_one_line(quickstart_rotary, write_config, tmp_path, ablate, want):
    cfg = small_config(quickstart_rotary)
    cfg["pairings"] = [{"model": "m", "attention": "flash", "ablate": ablate}]
    res = CliRunner().invoke(main, ["run", str(write_config(cfg)), "--out", str(tmp_path / "r"), "--no-progress"])
    err = res.stderr.strip()
    assert res.exit_code == 2 and want in err and len(err.splitlines()) == 1 and "pairings" in err, res.output
