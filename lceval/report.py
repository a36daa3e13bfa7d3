"""Reports from stored rows: tidy tables, heatmaps, distance curves, a summary.

``build_report(run_dir)`` reads only ``results.jsonl`` and ``manifest.json``,
so ``lceval report RUN_DIR`` rebuilds everything offline.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from lceval.errors import UserError  # noqa: E402
from lceval.store import MANIFEST, RESULTS, read_rows  # noqa: E402

Z95 = 1.959963984540054


def wilson(k: np.ndarray | float, n: np.ndarray | float, z: float = Z95):
    """95% Wilson score interval for k successes out of n (n = 0 gives nan)."""
    k, n = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denom = 1 + z**2 / n
        center = (p + z**2 / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return center - half, center + half


def load_frame(run_dir: Path) -> pd.DataFrame:
    rows = read_rows(run_dir)
    if not rows:
        raise UserError(f"{run_dir}: no results ({RESULTS} missing or empty); run `lceval run CONFIG --out {run_dir}` first")
    return pd.DataFrame(rows)


def cell_table(df: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per (pairing, task, context_length, depth) with counts and a 95% Wilson interval."""
    keys = ["pairing", "task", "context_length", "depth"]
    df = df.assign(ok=df["status"].eq("ok"), hit=df["correct"] & df["status"].eq("ok"))
    g = df.groupby(keys, sort=True)
    out = g.agg(n=("sample_id", "size"), n_ok=("ok", "sum"), correct=("hit", "sum")).reset_index()
    out["status"] = g["status"].agg(lambda s: ",".join(sorted(set(s)))).values
    out["accuracy"] = np.where(out["n_ok"] > 0, out["correct"] / out["n_ok"].where(out["n_ok"] > 0, 1), np.nan)
    out["ci_low"], out["ci_high"] = wilson(out["correct"], out["n_ok"])
    return out


def length_table(df: pd.DataFrame) -> pd.DataFrame:
    ok = df[df["status"] == "ok"]
    g = ok.groupby(["pairing", "task", "context_length"])["correct"]
    return g.agg(accuracy="mean", n="size").reset_index()


def effective_length(lengths: pd.DataFrame, threshold: float) -> int | None:
    """Longest context length whose mean accuracy is at least threshold (a fraction)."""
    good = lengths[lengths["accuracy"] >= threshold - 1e-12]
    return int(good["context_length"].max()) if len(good) else None


def distance_table(df: pd.DataFrame, bins: int) -> pd.DataFrame:
    ok = df[(df["status"] == "ok") & df["distance"].notna()] if "distance" in df else df.iloc[0:0]
    if ok.empty:
        return pd.DataFrame(columns=["pairing", "task", "distance_lo", "distance_hi", "n", "accuracy"])
    lo, hi = max(1.0, ok["distance"].min()), ok["distance"].max() + 1
    edges = np.unique(np.geomspace(lo, hi, bins + 1).round().astype(int))
    ok = ok.assign(bin=pd.cut(ok["distance"], edges, right=False, include_lowest=True))
    g = ok.groupby(["pairing", "task", "bin"], observed=True)["correct"].agg(["sum", "size"]).reset_index()
    g["distance_lo"] = [b.left for b in g["bin"]]
    g["distance_hi"] = [b.right for b in g["bin"]]
    g["accuracy"] = g["sum"] / g["size"]
    g["ci_low"], g["ci_high"] = wilson(g["sum"], g["size"])
    return g.rename(columns={"size": "n", "sum": "correct"}).drop(columns="bin")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def heatmap(cells: pd.DataFrame, pairing: str, task: str, path: Path) -> None:
    sub = cells[(cells["pairing"] == pairing) & (cells["task"] == task)]
    acc = sub.pivot(index="depth", columns="context_length", values="accuracy").sort_index()
    status = sub.pivot(index="depth", columns="context_length", values="status").reindex_like(acc)
    fig, ax = plt.subplots(figsize=(1.1 * acc.shape[1] + 2.5, 0.55 * acc.shape[0] + 1.8))
    cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="#cccccc")
    im = ax.imshow(np.ma.masked_invalid(acc.values.astype(float)), cmap=cmap, vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(acc.shape[1]), [f"{c:,}" for c in acc.columns])
    ax.set_yticks(range(acc.shape[0]), [f"{d:.0%}" for d in acc.index])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    for i in range(acc.shape[0]):
        for j in range(acc.shape[1]):
            v = acc.values[i, j]
            text = f"{v:.0%}" if not math.isnan(v) else str(status.values[i, j]).replace("_", "\n")
            ax.text(j, i, text, ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="accuracy")
    ax.set_title(f"{task}: {pairing}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def distance_plot(dist: pd.DataFrame, task: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for pairing, sub in dist[dist["task"] == task].groupby("pairing"):
        x = np.sqrt(sub["distance_lo"].astype(float) * sub["distance_hi"].astype(float))
        ax.plot(x, sub["accuracy"], marker="o", label=pairing)
        ax.fill_between(x, sub["ci_low"], sub["ci_high"], alpha=0.15)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("distance from question to needle (tokens)")
    ax.set_ylabel("accuracy (95% Wilson CI)")
    ax.set_title(f"{task}: accuracy by distance")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_table(df: pd.DataFrame, threshold_pct: float) -> pd.DataFrame:
    """One line per (task, pairing): mean accuracy, accuracy at each length, effective length."""
    lengths = length_table(df)
    recs = []
    for (task, pairing), sub in df.groupby(["task", "pairing"], sort=False):
        ok = sub[sub["status"] == "ok"]
        rec = {"task": task, "pairing": pairing,
               "mean_accuracy": ok["correct"].mean() if len(ok) else np.nan}
        lt = lengths[(lengths["task"] == task) & (lengths["pairing"] == pairing)]
        for L in sorted(sub["context_length"].unique()):
            hit = lt[lt["context_length"] == L]
            rec[int(L)] = hit["accuracy"].iloc[0] if len(hit) else np.nan
        rec["effective_length"] = effective_length(lt, threshold_pct / 100)
        bad = sub[sub["status"] != "ok"]["status"].value_counts()
        rec["not_ok"] = ", ".join(f"{k}={v}" for k, v in bad.items())
        recs.append(rec)
    return pd.DataFrame(recs)


def _fmt(v, column) -> str:
    """Accuracy columns (mean_accuracy and the per-length ones) as percent, lengths as integers."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if column == "mean_accuracy" or isinstance(column, int):
        return f"{v:.1%}"
    if column == "effective_length":
        return f"{int(v)}"
    return str(v)


def formatted(t: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({c: [_fmt(v, c) for v in t[c]] for c in t.columns})


def markdown_table(t: pd.DataFrame) -> str:
    shown = formatted(t)
    lines = ["| " + " | ".join(str(c) for c in shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in shown.itertuples(index=False)]
    return "\n".join(lines)


def build_report(run_dir: Path, threshold: float | None = None) -> Path:
    """Write ``report/`` inside the run directory; returns the summary path.

    ``threshold`` (percent) overrides the run's ``report.threshold`` for this report.
    """
    run_dir = Path(run_dir)
    manifest = json.loads((run_dir / MANIFEST).read_text()) if (run_dir / MANIFEST).exists() else {}
    rep_cfg = manifest.get("config", {}).get("report", {})
    threshold = float(threshold if threshold is not None else rep_cfg.get("threshold", 85.6))
    bins = int(rep_cfg.get("distance_bins", 8))
    df = load_frame(run_dir)
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    df.to_csv(out / "results.csv", index=False)
    cells = cell_table(df)
    cells.to_csv(out / "cells.csv", index=False)
    dist = distance_table(df, bins)
    dist.to_csv(out / "distance.csv", index=False)
    summary = summary_table(df, threshold)
    summary.to_csv(out / "summary.csv", index=False)

    images: list[tuple[str, Path]] = []
    for (task, pairing), _ in cells.groupby(["task", "pairing"], sort=False):
        path = out / f"heatmap_{_slug(task)}_{_slug(pairing)}.png"
        heatmap(cells, pairing, task, path)
        images.append((f"{task}: {pairing}", path))
    for task in dist["task"].unique():
        path = out / f"distance_{_slug(task)}.png"
        distance_plot(dist, task, path)
        images.append((f"{task}: accuracy by distance", path))

    name = manifest.get("config", {}).get("run", {}).get("name", run_dir.name)
    md = [f"# lceval report: {name}", "",
          f"Effective length: longest context length with mean accuracy >= {threshold:g}%. "
          "Accuracy counts rows with status ok; other statuses are listed under not_ok.", ""]
    for task, t in summary.groupby("task", sort=False):
        md += [f"## {task}", "", markdown_table(t.drop(columns="task").dropna(axis=1, how="all")), ""]
    md += ["## Figures", ""] + [f"![{title}]({p.name})" for title, p in images] + [""]
    md += [f"Rows: {len(df)} | git: {manifest.get('git_commit')} | seed: {manifest.get('seed')}", ""]
    (out / "summary.md").write_text("\n".join(md))
    _html(out / "report.html", name, summary, images)
    return out / "summary.md"


def _html(path: Path, name: str, summary: pd.DataFrame, images) -> None:
    parts = [f"<!doctype html><meta charset='utf-8'><title>lceval: {html.escape(name)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}</style>",
             f"<h1>lceval report: {html.escape(name)}</h1>"]
    parts.append(formatted(summary).to_html(index=False, escape=True))
    for title, p in images:
        data = base64.b64encode(p.read_bytes()).decode()
        parts.append(f"<h3>{html.escape(title)}</h3><img alt='{html.escape(title)}' src='data:image/png;base64,{data}'>")
    path.write_text("\n".join(parts))
