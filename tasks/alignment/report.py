"""The alignment task's report: tables and figures the generic report cannot draw.

* ``alignment.csv``: translation accuracy and AER per pairing, layout, length and depth, for the mean over
  heads and for the best head (chosen per pairing and layout on the calibration split, even sample numbers,
  and reported on the evaluation split, odd ones). AER is a ratio of sums over a cell.
* AER heatmaps by depth x length (best head), per pairing and layout, with 95% bootstrap intervals;
* translation accuracy and AER by distance (curves with 95% intervals), per layout;
* AER per layer x head, per pairing and layout (evaluation split, every cell pooled);
* the attention picture: one sentence pair, target words x source words, weights as shades, gold sure links
  boxed, possible links dotted, the predicted link crossed; short and long context side by side for the
  variants of one model.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from lceval import metrics  # noqa: E402
from lceval.rows import Status  # noqa: E402
from lceval.task import ReportPart  # noqa: E402

COUNT_KEYS = ("a", "s", "a_and_s", "a_and_p")
PREFIX = "meta.aer_counts."
BOOTSTRAP = 400  # resamples for AER intervals (rows resampled within a cell; fixed seed)


def _heads(df: pd.DataFrame) -> list[str]:
    cols = [c for c in df.columns if c.startswith(PREFIX)]
    return sorted({c[len(PREFIX):].rsplit(".", 1)[0] for c in cols} - {"mean"})


def _counts(part: pd.DataFrame, head: str) -> np.ndarray:
    """(rows, 4) AER counts of one head."""
    return part[[f"{PREFIX}{head}.{k}" for k in COUNT_KEYS]].to_numpy(float)


def _pooled(counts: np.ndarray) -> dict[str, float]:
    """AER, precision and recall of counts (rows, 4) summed over the rows: a ratio of sums."""
    return metrics.aer(dict(zip(COUNT_KEYS, counts.sum(0).astype(int).tolist(), strict=True)))


def _aer(counts: np.ndarray) -> float:
    return _pooled(counts)["aer"]


def aer_interval(counts: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of a pooled AER, resampling rows."""
    if len(counts) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(counts), size=(BOOTSTRAP, len(counts)))
    vals = np.array([_aer(sample) for sample in counts[picks]])  # counts[picks]: (BOOTSTRAP, rows, 4)
    vals = vals[~np.isnan(vals)]
    return (float(np.quantile(vals, 0.025)), float(np.quantile(vals, 0.975))) if len(vals) else (math.nan, math.nan)


def rows_of(df: pd.DataFrame) -> pd.DataFrame:
    if f"{PREFIX}mean.a" not in df or "meta.sample" not in df:
        return pd.DataFrame()
    return df[df["status"].eq(Status.OK.value) & df[f"{PREFIX}mean.a"].notna()]


def split(rows: pd.DataFrame, calibration: bool) -> pd.DataFrame:
    """The calibration split (even sample numbers: the best head is chosen there) or the evaluation split (odd)."""
    return rows[rows["meta.sample"].astype(int) % 2 == (0 if calibration else 1)]


def best_heads(rows: pd.DataFrame) -> dict[tuple[str, str], str]:
    """The head with the lowest pooled AER on the calibration split, per pairing and layout."""
    heads = _heads(rows)
    calibration = split(rows, calibration=True)
    return {key: min(heads, key=lambda h, g=g: _aer(_counts(g, h)))
            for key, g in calibration.groupby(["pairing", "meta.layout"])}


def alignment_table(df: pd.DataFrame) -> pd.DataFrame:
    """Translation accuracy and AER by pairing, layout, length and depth (evaluation split)."""
    rows = rows_of(df)
    if rows.empty:
        return pd.DataFrame()
    best = best_heads(rows)
    evaluation = split(rows, calibration=False)
    out = []
    for (pairing, layout, length, depth), g in evaluation.groupby(
            ["pairing", "meta.layout", "context_length", "meta.depth"], sort=True):
        head = best.get((pairing, layout))
        top = _pooled(_counts(g, head)) if head else {}
        lo, hi = aer_interval(_counts(g, head)) if head else (math.nan, math.nan)
        out.append({"pairing": pairing, "layout": layout, "context_length": int(length), "depth": float(depth),
                    "n": len(g), "translation_accuracy": g["score"].mean(), "aer_mean_heads": _aer(_counts(g, "mean")),
                    "best_head": head, "aer_best_head": top.get("aer"), "aer_ci_low": lo, "aer_ci_high": hi,
                    "precision_best_head": top.get("precision"), "recall_best_head": top.get("recall")})
    return pd.DataFrame(out)


def head_table(df: pd.DataFrame) -> pd.DataFrame:
    """AER of every layer x head (and the mean) per pairing and layout, evaluation split, all cells pooled."""
    rows = rows_of(df)
    if rows.empty:
        return pd.DataFrame()
    evaluation = split(rows, calibration=False)
    out = []
    for (pairing, layout), g in evaluation.groupby(["pairing", "meta.layout"], sort=True):
        for head in [*_heads(rows), "mean"]:
            out.append({"pairing": pairing, "layout": layout, "head": head, "n": len(g),
                        "aer": _aer(_counts(g, head))})
    return pd.DataFrame(out)


def distance_aer(df: pd.DataFrame, bins: int = 6) -> pd.DataFrame:
    """Translation accuracy and best-head AER by distance from the translation back to its source (log bins),
    evaluation split."""
    from lceval.report.tables import interval, log_bins

    rows = rows_of(df)
    if rows.empty or "meta.distance" not in rows:
        return pd.DataFrame()
    best = best_heads(rows)
    evaluation = split(rows, calibration=False)
    evaluation = evaluation.assign(bin=log_bins(evaluation["meta.distance"].astype(float), bins))
    out = []
    for (pairing, layout, b), g in evaluation.groupby(["pairing", "meta.layout", "bin"], observed=True, sort=True):
        head = best.get((pairing, layout))
        if head is None:
            continue
        counts = _counts(g, head)
        lo, hi = aer_interval(counts)
        t_lo, t_hi = interval(g["score"].astype(float))
        out.append({"pairing": pairing, "layout": layout, "distance_lo": int(b.left), "distance_hi": int(b.right),
                    "n": len(g), "translation_accuracy": g["score"].astype(float).mean(), "translation_ci_low": t_lo,
                    "translation_ci_high": t_hi, "aer": _aer(counts), "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(out)


# --- figures ---------------------------------------------------------------------------
def _matrix(values: np.ndarray, notes: list[list[str]], xticks: list[str], yticks: list[str], xlabel: str,
            ylabel: str, title: str, path: Path) -> None:
    """An AER matrix: low AER is good (green), 1 is no correct link (red); unrun cells grey."""
    from lceval.report.figures import matrix_plot

    matrix_plot(values, notes, xticks, yticks, xlabel, ylabel, title, path, cmap="RdYlGn_r",
                colorbar="AER (lower is better)", cell=(1.3, 0.6))


def aer_heatmap(table: pd.DataFrame, pairing: str, layout: str, path: Path) -> None:
    sub = table[(table["pairing"] == pairing) & (table["layout"] == layout)]
    piv = sub.pivot(index="depth", columns="context_length", values="aer_best_head").sort_index()
    lo, hi, n = (sub.pivot(index="depth", columns="context_length", values=v).reindex_like(piv)
                 for v in ("aer_ci_low", "aer_ci_high", "n"))
    notes = [[("-" if math.isnan(piv.values[i, j]) else
               f"{piv.values[i, j]:.2f}\n[{lo.values[i, j]:.2f}-{hi.values[i, j]:.2f}]\nn={int(n.values[i, j])}")
              for j in range(piv.shape[1])] for i in range(piv.shape[0])]
    head = sub["best_head"].iloc[0] if len(sub) else "?"
    _matrix(piv.values, notes, [f"{int(c):,}" for c in piv.columns], [f"{d:.0%}" for d in piv.index],
            "context length (tokens)", "depth of the source sentence",
            f"alignment AER, best head {head}: {pairing}, {layout}", path)


def head_heatmap(heads: pd.DataFrame, pairing: str, layout: str, path: Path) -> None:
    sub = heads[(heads["pairing"] == pairing) & (heads["layout"] == layout) & (heads["head"] != "mean")]
    parsed = [(int(h[1:].split("H")[0]), int(h.split("H")[1]), a) for h, a in zip(sub["head"], sub["aer"],
                                                                                    strict=True)]
    n_layers, n_heads = max(p[0] for p in parsed) + 1, max(p[1] for p in parsed) + 1
    values = np.full((n_layers, n_heads), np.nan)
    for layer, head, a in parsed:
        values[layer, head] = a
    notes = [[f"{values[i, j]:.2f}" for j in range(n_heads)] for i in range(n_layers)]
    mean = heads[(heads["pairing"] == pairing) & (heads["layout"] == layout) & (heads["head"] == "mean")]["aer"]
    _matrix(values, notes, [str(h) for h in range(n_heads)], [str(layer) for layer in range(n_layers)], "head",
            "layer", f"AER per layer x head (mean of heads {mean.iloc[0]:.2f}): {pairing}, {layout}", path)


def distance_plot(dist: pd.DataFrame, layout: str, path: Path) -> None:
    """Two panels by distance: translation accuracy (95% interval) and best-head AER (95% bootstrap interval)."""
    from lceval.report.figures import STYLES, log2_axis, plot_text

    sub = dist[dist["layout"] == layout]
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.2))
    panels = [("translation_accuracy", "translation_ci_low", "translation_ci_high", "translation accuracy (95% interval)"),
              ("aer", "ci_low", "ci_high", "AER, best head (95% bootstrap interval)")]
    for ax, (col, lo, hi, label) in zip(axes, panels, strict=True):
        for i, (pairing, g) in enumerate(sub.groupby("pairing", sort=False)):
            marker, ls = STYLES[i % len(STYLES)]
            x = np.sqrt(g["distance_lo"].astype(float) * g["distance_hi"].astype(float))
            ax.plot(x, g[col], marker=marker, linestyle=ls, label=plot_text(pairing), alpha=0.9)
            ax.fill_between(x, g[lo], g[hi], alpha=0.12)
        log2_axis(ax)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("distance from the translation back to its source (tokens)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.suptitle(f"alignment by distance, {layout} (full and flash coincide where both are run)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def picture_rows(df: pd.DataFrame, model: str, layout: str) -> tuple[pd.DataFrame, list[int]]:
    """The rows the attention picture shows: one evaluation sample (the first odd one at the smallest depth),
    at the shortest and the longest length, for every pairing of ``model``."""
    rows = rows_of(df)
    evaluation = split(rows, calibration=False)
    mine = evaluation[(evaluation["model"] == model) & (evaluation["meta.layout"] == layout)]
    if mine.empty:
        return mine, []
    depth = mine["meta.depth"].min()
    sample = mine.loc[mine["meta.depth"] == depth, "meta.sample"].astype(int).min()
    mine = mine[(mine["meta.depth"] == depth) & (mine["meta.sample"].astype(int) == sample)]
    lengths = sorted(mine["context_length"].astype(int).unique())
    return mine, [lengths[0], lengths[-1]] if len(lengths) > 1 else lengths


def attention_picture(df: pd.DataFrame, model: str, layout: str, path: Path) -> bool:
    """Target words x source words for one sentence pair; a column per variant, a row per length."""
    from lceval.report.figures import plot_text

    mine, lengths = picture_rows(df, model, layout)
    if mine.empty or "meta.focus_weights.mean" not in mine:
        return False
    best = best_heads(rows_of(df))
    pairings = list(dict.fromkeys(mine["pairing"]))
    fig, axes = plt.subplots(len(lengths), len(pairings), squeeze=False,
                             figsize=(2.9 * len(pairings) + 0.8, 2.9 * len(lengths) + 0.6))
    for i, length in enumerate(lengths):
        for j, pairing in enumerate(pairings):
            ax = axes[i][j]
            row = mine[(mine["pairing"] == pairing) & (mine["context_length"].astype(int) == length)]
            if row.empty:
                ax.axis("off")
                continue
            row = row.iloc[0]
            head = best.get((pairing, layout), "mean")
            w = np.array(row[f"meta.focus_weights.{head}"], dtype=float)  # (target words, source words)
            src, tgt = list(row["meta.source_words"]), list(row["meta.target_words"])
            ax.imshow(w, cmap="Blues", vmin=0, vmax=max(1e-6, float(w.max())), aspect="auto")
            sure, possible = {tuple(x) for x in row["meta.sure"]}, {tuple(x) for x in row["meta.possible"]}
            for s, t in possible - sure:
                ax.plot(s, t, "o", mfc="none", mec="#e08000", ms=9, mew=1.2)
            for s, t in sure:
                ax.add_patch(plt.Rectangle((s - 0.5, t - 0.5), 1, 1, fill=False, ec="#e08000", lw=1.6))
            for s, t in row[f"meta.links.{head}"]:
                if s >= 0:
                    ax.plot(s, t, "x", color="#c00000", ms=7, mew=1.6)
            ax.set_xticks(range(len(src)), [plot_text(x) for x in src], rotation=60, fontsize=7)
            ax.set_yticks(range(len(tgt)), [plot_text(x) for x in tgt], fontsize=7)
            dist = int(row["meta.distance"])
            ax.set_title(plot_text(f"{pairing} ({head})\n{length:,} tokens, distance {dist:,}"), fontsize=8)
    fig.suptitle(plot_text(f"{model}, {layout}: attention of each target word over the source words "
                           "(box: sure gold link, circle: possible, x: predicted)"), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def build(df: pd.DataFrame, out: Path) -> ReportPart:
    """Write the alignment tables and figures into ``out``; return report sections and images."""
    from lceval.report.figures import file_stem
    from lceval.report.tables import rounded

    table = alignment_table(df)
    if table.empty:
        return ReportPart()
    rounded(table).to_csv(out / "alignment.csv", index=False)
    heads = head_table(df)
    rounded(heads).to_csv(out / "alignment_heads.csv", index=False)
    dist = distance_aer(df)
    rounded(dist).to_csv(out / "alignment_distance.csv", index=False)
    images = []
    for (pairing, layout), _ in table.groupby(["pairing", "layout"], sort=False):
        path = out / f"aer_{file_stem(pairing, layout)}.png"
        aer_heatmap(table, pairing, layout, path)
        images.append((f"alignment AER: {pairing}, {layout}", path))
        path = out / f"aer_heads_{file_stem(pairing, layout)}.png"
        head_heatmap(heads, pairing, layout, path)
        images.append((f"alignment AER per layer x head: {pairing}, {layout}", path))
    for layout in dist["layout"].unique() if not dist.empty else []:
        path = out / f"aer_distance_{file_stem(layout)}.png"
        distance_plot(dist, layout, path)
        images.append((f"alignment translation accuracy and AER by distance: {layout}", path))
    for model in rows_of(df)["model"].unique():
        for layout in table["layout"].unique():
            path = out / f"attention_{file_stem(model, layout)}.png"
            if attention_picture(df, model, layout, path):
                images.append((f"attention picture: {model}, {layout}", path))
    sections = [("Alignment: translation accuracy and AER (best head chosen on even samples, reported on odd)",
                 table.drop(columns=["aer_ci_low", "aer_ci_high"]))]
    return ReportPart(sections, images)
