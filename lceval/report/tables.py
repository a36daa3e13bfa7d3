"""Statistics and tables of a run's rows: cells with Wilson intervals, scores by length, effective length
(RULER's absolute threshold, NoLiMa's relative one), the RULER table, agreement with the oracle, scores by
distance. Pure pandas: no figures, no files but what the caller writes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from lceval.errors import UserError
from lceval.rows import DIAGNOSES, RAN, Row, Status
from lceval.store import RESULTS, rows_of_run

Z95 = 1.959963984540054
RELATIVE = 0.85  # NoLiMa's relative threshold: 85% of the score at the shortest length


def wilson(k: np.ndarray | float, n: np.ndarray | float, z: float = Z95):
    """95% Wilson score interval for k successes out of n (n = 0 gives nan)."""
    k, n = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denom = 1 + z**2 / n
        center = (p + z**2 / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return center - half, center + half


def interval(scores: pd.Series) -> tuple[float, float]:
    """95% interval of a mean score in [0, 1]: Wilson for 0/1 scores, normal otherwise (clipped)."""
    x = scores.to_numpy(dtype=float)
    n = len(x)
    if n == 0:
        return math.nan, math.nan
    if np.isin(x, (0.0, 1.0)).all():
        lo, hi = wilson(x.sum(), n)
        return float(lo), float(hi)
    half = Z95 * (x.std(ddof=1) if n > 1 else 0.5) / math.sqrt(n)
    return max(0.0, x.mean() - half), min(1.0, x.mean() + half)


def load_frame(run_dir: Path, run_id: str | None = None, warn=None) -> pd.DataFrame:
    """The run's rows as a frame: only those of ``run_id`` (the manifest's) when it is known, saying through
    ``warn`` how many rows of other runs were left out; without a manifest, rows of several runs are refused."""
    rows, other = rows_of_run(run_dir, run_id)
    if not rows and other:
        raise UserError(f"{run_dir}: none of its rows belong to the run its manifest.json names ({run_id}); "
                        "the manifest was replaced: run the config again into this --out")
    if not rows:
        raise UserError(f"{run_dir}: no results ({RESULTS} missing or empty); run `lceval run CONFIG --out {run_dir}` first")
    if other and warn is not None:
        warn(f"warning: {other} row(s) of another run id in {run_dir / RESULTS} were left out; the report uses "
             f"the {len(rows)} rows of run {run_id}")
    if run_id is None and len({r.get("run_id") for r in rows}) > 1:
        raise UserError(f"{run_dir}: rows of {len({r.get('run_id') for r in rows})} different runs and no "
                        "manifest.json to say which is this run's; move the rows of other runs out")
    return frame(rows)


def frame(rows: list[dict]) -> pd.DataFrame:
    """Rows (of any lceval: each is upgraded to the current ``Row``) -> a DataFrame; each task meta key becomes
    a ``meta.<key>`` column. ``ran``: the row counts in a score; ``value``: its score, 0 unless ``ok``."""
    df = pd.DataFrame([Row.upgrade(r) or r for r in rows])
    if "meta" in df:
        meta = pd.json_normalize([m if isinstance(m, dict) else {} for m in df["meta"]]).add_prefix("meta.")
        df = pd.concat([df.drop(columns="meta").reset_index(drop=True), meta], axis=1)
    df["ran"] = df["status"].isin(RAN)
    df["value"] = np.where(df["status"].eq(Status.OK.value), df["score"].astype(float), 0.0)
    return df


def _cells(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Score per group: n, n_ran, score (over ran rows; failed = 0), 95% interval, statuses."""
    recs = []
    for key, sub in df.groupby(keys, sort=True, dropna=False):
        ran = sub[sub["ran"]]
        lo, hi = interval(ran["value"])
        statuses = sub["status"].value_counts()
        recs.append({**dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True)),
                     "n": len(sub), "n_ran": len(ran), "score": ran["value"].mean() if len(ran) else math.nan,
                     "ci_low": lo, "ci_high": hi,
                     "status": ",".join(f"{k}={v}" for k, v in statuses.items())})
    return pd.DataFrame(recs)


def task_groups(manifest: dict, task: str, df: pd.DataFrame) -> list[str]:
    """The meta columns a task's cells are grouped by (declared in the manifest)."""
    info = manifest.get("tasks", {}).get(task, {})
    declared = info.get("group_by")
    if declared is None:  # an older run: depth if it has one
        declared = ["depth"] if "meta.depth" in df else []
    return [f"meta.{g}" for g in declared if f"meta.{g}" in df]


def cell_table(df: pd.DataFrame, manifest: dict | None = None) -> pd.DataFrame:
    """Score per (task, pairing, context_length, *task groups) with counts and a 95% interval."""
    parts = []
    for task, sub in df.groupby("task", sort=False):
        groups = task_groups(manifest or {}, task, sub)
        parts.append(_cells(sub, ["task", "pairing", "context_length", *groups]))
    return pd.concat(parts, ignore_index=True)


def length_table(df: pd.DataFrame) -> pd.DataFrame:
    """Score per (task, pairing, context_length) over the pairing's full grid."""
    return _cells(df, ["task", "pairing", "context_length"])


def effective_length(lengths: pd.DataFrame, threshold: float, relative: bool = False) -> int | None:
    """Longest tested length L such that every tested length up to L passes.

    ``lengths``: context_length and score (fraction; NaN when the length could not run).
    Absolute: score >= threshold. Relative: score >= threshold x the score at the shortest length.
    """
    t = lengths.sort_values("context_length")
    if t.empty:
        return None
    bar = threshold * t["score"].iloc[0] if relative else threshold
    if relative and not (bar > 0):
        return None
    best = None
    for L, s in zip(t["context_length"], t["score"], strict=True):
        if not (s >= bar - 1e-12):  # NaN (did not run) fails too
            break
        best = int(L)
    return best


def summary_table(df: pd.DataFrame, threshold_pct: float, lengths: pd.DataFrame | None = None) -> pd.DataFrame:
    """One line per (task, pairing): mean over the task's lengths, score per length, effective lengths.

    ``lengths``: ``length_table(df)`` when the caller has it already.
    """
    lengths = length_table(df) if lengths is None else lengths
    all_lengths = sorted(df["context_length"].unique())
    recs = []
    for (task, pairing), lt in lengths.groupby(["task", "pairing"], sort=False):
        rec = {"task": task, "pairing": pairing}
        per = dict(zip(lt["context_length"], lt["score"], strict=True))
        for L in all_lengths:
            rec[int(L)] = per.get(L, math.nan)
        ran = [per[L] for L in per if not math.isnan(per[L])]
        rec["mean"] = float(np.mean(ran)) if len(ran) == len(per) and ran else math.nan  # only over a full grid
        rec["effective_length"] = effective_length(lt, threshold_pct / 100)
        rec["effective_length_rel"] = effective_length(lt, RELATIVE, relative=True)
        sub = df[(df["task"] == task) & (df["pairing"] == pairing)]
        bad = sub[sub["status"] != Status.OK.value]["status"].value_counts()
        rec["not_ok"] = ", ".join(f"{k}={v}" for k, v in bad.items())
        recs.append(rec)
    return pd.DataFrame(recs)


def ruler_table(df: pd.DataFrame, threshold_pct: float, lengths: pd.DataFrame | None = None) -> pd.DataFrame:
    """RULER's table: per pairing and length, the mean over tasks of the task scores, with a 95% interval."""
    lengths = length_table(df) if lengths is None else lengths
    recs = []
    for pairing, sub in lengths.groupby("pairing", sort=False):
        rec = {"pairing": pairing}
        curve = []
        for L, at in sub.groupby("context_length"):
            if at["score"].isna().any():
                rec[int(L)] = math.nan
                curve.append((L, math.nan))
                continue
            mean = at["score"].mean()
            half = (at["ci_high"] - at["ci_low"]).pow(2).sum() ** 0.5 / (2 * len(at))  # independent tasks
            rec[int(L)] = mean
            rec[f"{int(L)} ci"] = f"{100 * max(0, mean - half):.1f}-{100 * min(1, mean + half):.1f}"
            curve.append((L, mean))
        scores = [s for _, s in curve]
        rec["mean"] = float(np.mean(scores)) if not any(math.isnan(s) for s in scores) else math.nan
        ct = pd.DataFrame(curve, columns=["context_length", "score"])
        rec["effective_length"] = effective_length(ct, threshold_pct / 100)
        rec["effective_length_rel"] = effective_length(ct, RELATIVE, relative=True)
        rec["tasks"] = sub["task"].nunique()
        recs.append(rec)
    return pd.DataFrame(recs)


def agreement_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per-sample agreement of each variant with the oracle of its model (``full``, else ``flash``).

    agree: same prediction and same score; max_logprob_diff: largest |difference| in the
    reference answer's log-probability (teacher-forced tasks).
    """
    recs = []
    ok = df[df["status"] == Status.OK.value]
    for model, sub in ok.groupby("model", sort=False):
        oracles = [a for a in ("full", "flash") if (sub["attention"] == a).any()]
        if not oracles:
            continue
        oracle_pairings = sub[sub["attention"] == oracles[0]]["pairing"].unique()
        if len(oracle_pairings) != 1:
            continue
        ref = sub[sub["pairing"] == oracle_pairings[0]].set_index(["task", "sample_id"])
        for pairing, other in sub.groupby("pairing", sort=False):
            if pairing == oracle_pairings[0]:
                continue
            o = other.set_index(["task", "sample_id"])
            common = ref.index.intersection(o.index)
            if not len(common):
                continue
            a, b = ref.loc[common], o.loc[common]
            same = (a["prediction"].fillna("").values == b["prediction"].fillna("").values) & (
                np.isclose(a["score"].values.astype(float), b["score"].values.astype(float)))
            lp = (a["answer_logprob"].astype(float) - b["answer_logprob"].astype(float)).abs()
            recs.append({"model": model, "pairing": pairing, "oracle": oracle_pairings[0], "samples": len(common),
                         "agree": float(same.mean()), "changed": int((~same).sum()),
                         "max_logprob_diff": float(lp.max()) if lp.notna().any() else math.nan})
    return pd.DataFrame(recs, columns=["model", "pairing", "oracle", "samples", "agree", "changed",
                                       "max_logprob_diff"])


def log_bins(distance: pd.Series, bins: int) -> pd.Series:
    """Each distance's bin among ``bins`` log-spaced integer intervals [lo, hi) covering them all."""
    lo, hi = max(1.0, distance.min()), distance.max() + 1
    edges = np.unique(np.geomspace(lo, hi, bins + 1).round().astype(int))
    if len(edges) < 2:
        edges = np.array([int(lo), int(hi) + 1])
    return pd.cut(distance, edges, right=False, include_lowest=True)


def distance_table(df: pd.DataFrame, bins: int, manifest: dict | None = None) -> pd.DataFrame:
    """Score by query-to-needle distance (log-spaced bins) for tasks that declare a distance."""
    parts = []
    for task, sub in df.groupby("task", sort=False):
        info = (manifest or {}).get("tasks", {}).get(task, {})
        key = f"meta.{info.get('distance_key') or 'distance'}"
        if key not in sub:
            continue
        sub = sub[sub["ran"] & sub[key].notna()].assign(distance=lambda d, k=key: d[k].astype(float))
        if sub.empty:
            continue
        sub = sub.assign(bin=log_bins(sub["distance"], bins))
        for (pairing, b), g in sub.groupby(["pairing", "bin"], observed=True):
            lo_ci, hi_ci = interval(g["value"])
            parts.append({"task": task, "pairing": pairing, "distance_lo": int(b.left), "distance_hi": int(b.right),
                          "n": len(g), "score": g["value"].mean(), "ci_low": lo_ci, "ci_high": hi_ci})
    return pd.DataFrame(parts, columns=["task", "pairing", "distance_lo", "distance_hi", "n", "score", "ci_low",
                                        "ci_high"])


def rounded(t: pd.DataFrame) -> pd.DataFrame:
    """Figures for CSV: scores to 4 decimals, lengths and counts as integers."""
    out = t.copy()
    for c in out.columns:
        if out[c].dtype.kind == "f":
            col = out[c]
            if c in ("context_length", "n", "n_ran", "samples", "distance_lo", "distance_hi") or (
                    col.dropna() == col.dropna().round()).all() and c in ("effective_length", "effective_length_rel"):
                out[c] = col.astype("Int64")
            else:
                out[c] = col.round(4)
    return out


def diagnosis_table(df: pd.DataFrame) -> pd.DataFrame:
    """Rows by diagnosis per task, pairing, length and (where the task has one) depth: why needles were missed."""
    if "diagnosis" not in df or df["diagnosis"].isna().all():
        return pd.DataFrame()
    sub = df[df["diagnosis"].notna()]
    keys = ["task", "pairing", "context_length"]
    if "meta.depth" in sub and sub["meta.depth"].notna().all():
        sub = sub.rename(columns={"meta.depth": "depth"})
        keys.append("depth")
    counts = sub.groupby([*keys, "diagnosis"], sort=True).size().unstack(fill_value=0)
    counts = counts.reindex(columns=list(DIAGNOSES), fill_value=0)
    counts.insert(0, "n", counts.sum(axis=1))
    return counts.reset_index().rename_axis(columns=None)


def retrieval_table(df: pd.DataFrame) -> pd.DataFrame:
    """Wu et al. 2024's retrieval score per head: over samples whose needle has value tokens, the mean share of
    those tokens the head copied (its top-weighted key on the token the model emitted). One row per model,
    pairing, layer and head; ``n`` samples."""
    cols = ["meta.attention.copy_heads", "meta.attention.value_tokens", "meta.attention.evidence_mass"]
    if any(c not in df for c in cols):
        return pd.DataFrame()
    sub = df[df["status"].eq(Status.OK.value) & df["meta.attention.value_tokens"].fillna(0).gt(0)]
    out = []
    for (model, pairing), g in sub.groupby(["model", "pairing"], sort=False):
        shape = np.asarray(g["meta.attention.evidence_mass"].iloc[0]).shape  # (L, H)
        total = np.zeros(shape)
        for heads, k in zip(g["meta.attention.copy_heads"], g["meta.attention.value_tokens"], strict=True):
            for layer, head, copied in heads if isinstance(heads, list) else []:
                total[layer, head] += copied / k
        score = total / len(g)
        out += [{"model": model, "pairing": pairing, "layer": layer, "head": head, "score": score[layer, head],
                 "n": len(g)} for layer in range(shape[0]) for head in range(shape[1])]
    return pd.DataFrame(out)


def write_results(df: pd.DataFrame, out: Path) -> None:
    """The tidy per-sample table: ``results.csv`` and ``results.parquet`` (mappings such as ``attention_params``
    as JSON text in Parquet, whose structs need fields; lists stay lists)."""
    import json

    t = rounded(df.drop(columns=["ran", "value"]))
    t.to_csv(out / "results.csv", index=False)
    for c in t.columns:
        if t[c].dtype == object and t[c].map(lambda v: isinstance(v, dict)).any():
            t[c] = t[c].map(lambda v: json.dumps(v, sort_keys=True) if isinstance(v, dict) else v)
    t.to_parquet(out / "results.parquet", index=False)
