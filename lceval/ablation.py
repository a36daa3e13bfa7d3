"""Head ablation: which attention heads a pairing zeroes, resolved once the model's shape is known.

A pairing's ``ablate`` names heads directly, or ranks them by an earlier run's retrieval scores
(``report/retrieval_heads.csv``): ``top_retrieval: K`` takes the K best; ``random: K`` draws K with a seed,
from every head or (``exclude_top: K2``) from those outside the top K2, the control Wu et al. 2024 use.
The chosen heads are part of the run identity. Zeroing happens inside the attention layers of the
reference model (``ReferenceTransformer.set_ablation``) and of Hugging Face models (``lceval_attention``):
the head's slice of the attention output, before the output projection (``lceval.attention.core.zero_heads``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lceval.config import AblationSpec
from lceval.errors import ConfigError
from lceval.resolve import retrieval_file

Heads = list[tuple[int, int]]


def ranked_heads(run_dir, model: str) -> Heads:
    """The heads of ``model`` in an earlier run, best retrieval score first (ties by layer, head). Of several
    pairings of that model, the first exact one (full or flash) is used, else the first listed."""
    table = pd.read_csv(retrieval_file(run_dir, "ablate.from"))
    mine = table[table["model"] == model]
    if mine.empty:
        raise ConfigError("ablate.from", f"{run_dir} ranked no heads of model {model!r} (its retrieval_heads.csv "
                          f"has {', '.join(sorted(table['model'].unique()))}); rank this model first")
    pairings = list(dict.fromkeys(mine["pairing"]))
    exact = [p for p in pairings if p.endswith(("/flash", "/full"))]
    mine = mine[mine["pairing"] == (exact or pairings)[0]]
    mine = mine.sort_values(["score", "layer", "head"], ascending=[False, True, True], kind="stable")
    return [(int(layer), int(h)) for layer, h in zip(mine["layer"], mine["head"], strict=True)]


def resolve_heads(spec: AblationSpec, model: str, n_layers: int, n_heads: int, where: str) -> Heads:
    """The (layer, head) pairs ``spec`` zeroes in a model of ``n_layers`` x ``n_heads``, sorted."""
    every = [(layer, h) for layer in range(n_layers) for h in range(n_heads)]
    if spec.heads is not None:
        bad = [f"L{layer}H{h}" for layer, h in spec.heads if layer >= n_layers or h >= n_heads]
        if bad:
            raise ConfigError(f"{where}.heads", f"{', '.join(bad)} is not a head of {model} ({n_layers} layers x "
                              f"{n_heads} heads, numbered from 0)")
        return sorted(set(spec.heads))
    ranked = ranked_heads(spec.from_run, model) if spec.from_run is not None else every
    if spec.top_retrieval is not None:
        return sorted(ranked[: spec.top_retrieval])
    excluded = set(ranked[: spec.exclude_top or 0])
    pool = [hd for hd in every if hd not in excluded]
    if spec.random > len(pool):
        raise ConfigError(f"{where}.random", f"{spec.random} heads asked for, {len(pool)} to draw from")
    picks = np.random.default_rng(spec.seed).choice(len(pool), size=spec.random, replace=False)
    return sorted(pool[int(i)] for i in picks)
