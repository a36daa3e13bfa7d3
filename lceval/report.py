"""Reports from stored rows: tidy tables, heatmaps, curves, effective length, agreement.

``build_report(run_dir)`` reads only ``results.jsonl`` and ``manifest.json``,
so ``lceval report RUN_DIR`` rebuilds everything offline.

Rules the report states on its page:

* A cell's score is the mean per-sample score (percent). Rows that ran and
  failed (``nonfinite``, ``oom``, ``error``) count as 0 and are listed; rows
  that could not run (``unsupported_length``, ``skipped_memory``) leave the cell
  empty and say why.
* Effective length: the longest tested length L such that every tested length
  up to L passes. Absolute: score >= the threshold (RULER: 85.6). Relative
  (NoLiMa): score >= 85% of the pairing's score at its shortest length. A
  length that could not run does not pass.
"""

from __future__ import annotations

import base64
import hashlib
import html
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from lceval import registry  # noqa: E402
from lceval.cores import core_count  # noqa: E402
from lceval.errors import UserError  # noqa: E402
from lceval.rows import RAN, Row, Status  # noqa: E402
from lceval.store import RESULTS, read_manifest, rows_of_run  # noqa: E402

Z95 = 1.959963984540054
RELATIVE = 0.85  # NoLiMa's relative threshold: 85% of the score at the shortest length
DEPTH_NOTE = ("Depth: 0% puts the needle at the start of the context, farthest from the question; "
              "100% puts it right before the question.")


# --- statistics ------------------------------------------------------------------------
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


# --- frames ----------------------------------------------------------------------------
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


# --- files -----------------------------------------------------------------------------
def file_stem(*parts: str) -> str:
    """A readable, collision-free file name: a slug plus a short hash of the exact text."""
    text = "\x1f".join(parts)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", "_".join(parts)).strip("_")[:60]
    return f"{slug}-{hashlib.sha1(text.encode()).hexdigest()[:6]}"


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


def _pct(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def _len(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{int(v):,}"


def formatted(t: pd.DataFrame) -> pd.DataFrame:
    """Scores as percent (one decimal), lengths as integers, missing as '-'."""
    cols = {}
    for c in t.columns:
        if isinstance(c, int) or c in ("mean", "score", "agree"):
            cols[c] = [_pct(v) for v in t[c]]
        elif c in ("effective_length", "effective_length_rel", "context_length"):
            cols[c] = [_len(v) for v in t[c]]
        elif c == "max_logprob_diff":
            cols[c] = ["-" if isinstance(v, float) and math.isnan(v) else f"{v:.2g}" for v in t[c]]
        else:
            cols[c] = ["-" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in t[c]]
    return pd.DataFrame(cols)


def markdown_table(t: pd.DataFrame) -> str:
    shown = formatted(t)
    lines = ["| " + " | ".join(str(c) for c in shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in shown.itertuples(index=False)]
    return "\n".join(lines)


# --- figures ---------------------------------------------------------------------------
_FONT = None


def plot_text(text: str) -> str:
    """``text`` with characters the plotting font lacks escaped (``\\u4e2d``), so figures never warn
    about missing glyphs; the HTML page shows the label itself."""
    global _FONT
    if _FONT is None:
        from matplotlib import font_manager

        _FONT = font_manager.get_font(font_manager.findfont(font_manager.FontProperties()))
    return "".join(c if c.isascii() or _FONT.get_char_index(ord(c)) else f"\\u{ord(c):04x}" for c in str(text))


LEGEND_ROWS = 40  # legend entries per column of a curve plot
BAND_PAIRINGS = 8  # curve plots with more pairings leave out the 95% bands (dozens of overlaid bands hide the lines)
STYLES = [("o", "-"), ("s", "--"), ("^", ":"), ("D", "-."), ("v", "-"), ("P", "--"), ("X", ":"), ("*", "-.")]


def heatmap(cells: pd.DataFrame, pairing: str, task: str, group: str, path: Path, label: str | None = None) -> None:
    sub = cells[(cells["pairing"] == pairing) & (cells["task"] == task)]
    acc = sub.pivot(index=group, columns="context_length", values="score").sort_index()
    n = sub.pivot(index=group, columns="context_length", values="n_ran").reindex_like(acc)
    lo = sub.pivot(index=group, columns="context_length", values="ci_low").reindex_like(acc)
    hi = sub.pivot(index=group, columns="context_length", values="ci_high").reindex_like(acc)
    status = sub.pivot(index=group, columns="context_length", values="status").reindex_like(acc)
    fig, ax = plt.subplots(figsize=(1.35 * acc.shape[1] + 2.8, 0.65 * acc.shape[0] + 1.9))
    cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="#cccccc")
    im = ax.imshow(np.ma.masked_invalid(acc.values.astype(float)), cmap=cmap, vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(acc.shape[1]), [f"{int(c):,}" for c in acc.columns])
    is_depth = group.endswith("depth")
    ends = {0.0: "\n(start)", 1.0: "\n(by the question)"}
    ax.set_yticks(range(acc.shape[0]), [f"{d:.0%}{ends.get(float(d), '')}" if is_depth else str(d) for d in acc.index])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth" if is_depth else group.removeprefix("meta."))
    for i in range(acc.shape[0]):
        for j in range(acc.shape[1]):
            v = acc.values[i, j]
            if math.isnan(v):
                text = str(status.values[i, j]).split("=")[0].replace("_", "\n")
            else:
                text = f"{v:.0%}\n[{lo.values[i, j]:.0%}-{hi.values[i, j]:.0%}]\nn={int(n.values[i, j])}"
            ax.text(j, i, text, ha="center", va="center", fontsize=6.5)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="score (95% interval, n)")
    ax.set_title(plot_text(f"{task}: {label or pairing}"), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _identical_note(curves: dict[str, tuple]) -> dict[str, str]:
    """Pairings whose curve equals an earlier one's: name -> the earlier name."""
    seen, same = {}, {}
    for name, key in curves.items():
        if key in seen:
            same[name] = seen[key]
        else:
            seen[key] = name
    return same


def curve_plot(t: pd.DataFrame, x: str, title: str, xlabel: str, path: Path, log: bool) -> None:
    """Score curves per pairing, with 95% bands for up to BAND_PAIRINGS pairings; distinct markers and line
    styles; the legend outside the axes, in columns of up to LEGEND_ROWS entries, every entry in the image."""
    groups = list(t.groupby("pairing", sort=False))
    ncol = -(-len(groups) // LEGEND_ROWS)
    height = max(4.2, 0.21 * -(-len(groups) // ncol) + 1.2)
    fig = plt.figure(figsize=(8.5, height))
    # fixed axes; the saved image grows to hold the legend (bbox_inches below), however long its labels
    ax = fig.add_axes((0.8 / 8.5, 0.65 / height, 5.4 / 8.5, (height - 1.1) / height))
    bands = len(groups) <= BAND_PAIRINGS
    same = _identical_note({p: tuple(np.round(s["score"].to_numpy(float), 6)) for p, s in groups})
    for i, (pairing, sub) in enumerate(groups):
        marker, ls = STYLES[i % len(STYLES)]
        xs = sub[x].astype(float)
        label = plot_text(pairing + (f" (identical to {same[pairing]})" if pairing in same else ""))
        ax.plot(xs, sub["score"], marker=marker, linestyle=ls, label=label, alpha=0.9,
                markersize=7 if pairing not in same else 4)
        if bands:
            ax.fill_between(xs, sub["ci_low"], sub["ci_high"], alpha=0.12)
    if log:
        ax.set_xscale("log", base=2)
        ticks = sorted(set(t[x].astype(float).round()))
        if len(ticks) <= 12:
            ax.set_xticks(ticks)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_ylim(-0.02, 1.02)
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("score (95% interval)" if bands else f"score (intervals in the CSVs: {len(groups)} pairings)")
    ax.set_title(plot_text(title))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, ncol=ncol)
    fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)


# --- the report ------------------------------------------------------------------------
def task_reports(df: pd.DataFrame, out: Path) -> tuple[list, list]:
    """Each task's own report pieces (``Task.report``); a task whose plugin is not installed is skipped."""
    sections, images = [], []
    for task in df["task"].unique():
        try:
            cls = registry.tasks.get(task)
        except UserError:
            continue
        s, i = cls.report(df[df["task"] == task].dropna(axis=1, how="all"), out)
        sections += s
        images += i
    return sections, images


PARALLEL_FIGURES = 16  # fewer figures are drawn in this process (starting a drawing process takes about 2 s)


def _draw_one(job: tuple) -> None:
    fn, args = job
    fn(*args)


def draw(figures: list[tuple], workers: int) -> None:
    """Draw (function, arguments) figures: in this process, or split over ``workers`` fresh processes (matplotlib
    spends most of a report's time laying out text; each figure is independent and written to its own file)."""
    workers = min(workers, len(figures))
    if workers > 1 and len(figures) >= PARALLEL_FIGURES:
        import concurrent.futures
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # never fork a process that has run torch's thread pool
        try:
            with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                list(pool.map(_draw_one, figures, chunksize=max(1, len(figures) // (4 * workers))))
            return
        except (OSError, concurrent.futures.process.BrokenProcessPool):  # no processes here (a sandbox, no /dev/shm)
            pass  # drawn below, in this process
    for job in figures:
        _draw_one(job)


def build_report(run_dir: Path, threshold: float | None = None, workers: int | str = 1, warn=None) -> Path:
    """Write ``report/`` inside the run directory; returns the summary path.

    ``threshold`` (percent) overrides the run's ``report.threshold`` for this report. With ``workers`` > 1 (or
    "auto": the run's ``run.threads`` rule, as the CLI passes) and at least ``PARALLEL_FIGURES`` figures, the
    figures are drawn in that many fresh processes. Those import the caller's main module, so a script that calls
    this with workers needs the ``if __name__ == "__main__":`` guard; the default draws here. Only the rows of
    the manifest's run id are reported; ``warn`` (a callable taking a line) hears how many others were left out.
    """
    try:
        return _write_report(Path(run_dir), threshold, workers, warn)
    except OSError as exc:  # a full disk while drawing a figure names no file: name the report folder
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(Path(run_dir) / "report")) from None
        raise


def _write_report(run_dir: Path, threshold: float | None, workers: int | str, warn) -> Path:
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)  # a damaged manifest only loses the report's labels, never the rows
    run_cfg = manifest.get("config", {}).get("run", {})
    rep_cfg = manifest.get("config", {}).get("report", {})
    threshold = float(threshold if threshold is not None else rep_cfg.get("threshold", 85.6))
    bins = int(rep_cfg.get("distance_bins", 8))
    df = load_frame(run_dir, manifest.get("run_id"), warn)
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    rounded(df.drop(columns=["ran", "value"])).to_csv(out / "results.csv", index=False)
    cells = cell_table(df, manifest)
    rounded(cells).to_csv(out / "cells.csv", index=False)
    lengths = length_table(df)
    dist = distance_table(df, bins, manifest)
    rounded(dist).to_csv(out / "distance.csv", index=False)
    summary = summary_table(df, threshold, lengths)
    rounded(summary).to_csv(out / "summary.csv", index=False)
    ruler = ruler_table(df, threshold, lengths) if df["task"].nunique() > 1 else None
    if ruler is not None:
        rounded(ruler).to_csv(out / "ruler.csv", index=False)
    agree = agreement_table(df)
    rounded(agree).to_csv(out / "agreement.csv", index=False)
    extra_sections, extra_images = task_reports(df, out)

    images: list[tuple[str, Path]] = []
    figures: list[tuple] = []  # (draw function, its arguments), drawn together below
    for task in df["task"].unique():
        groups = task_groups(manifest, task, df[df["task"] == task])
        tc = cells[cells["task"] == task]
        if groups:  # rows: the first group key; one heatmap per value of the others (e.g. alignment's layout)
            others = groups[1:]
            for pairing in tc["pairing"].unique():
                mine = tc[tc["pairing"] == pairing]
                combos = list(mine[others].drop_duplicates().itertuples(index=False, name=None)) if others else [()]
                for combo in combos:
                    sub = mine
                    for key, value in zip(others, combo, strict=True):
                        sub = sub[sub[key] == value]
                    label = pairing + "".join(f", {k.removeprefix('meta.')}={v}" for k, v in zip(others, combo, strict=True))
                    path = out / f"heatmap_{file_stem(task, pairing, *map(str, combo))}.png"
                    figures.append((heatmap, (sub, pairing, task, groups[0], path, label)))
                    images.append((f"{task}: {label}", path))
        lt = lengths[lengths["task"] == task]
        if lt["context_length"].nunique() > 1:
            path = out / f"length_{file_stem(task)}.png"
            figures.append((curve_plot, (lt, "context_length", f"{task}: score by context length",
                                         "context length (tokens)", path, True)))
            images.append((f"{task}: score by context length", path))
        dt = dist[dist["task"] == task]
        if not dt.empty:
            dt = dt.assign(mid=np.sqrt(dt["distance_lo"].astype(float) * dt["distance_hi"].astype(float)))
            path = out / f"distance_{file_stem(task)}.png"
            figures.append((curve_plot, (dt, "mid", f"{task}: score by distance",
                                         "distance from the question to the needle (tokens)", path, True)))
            images.append((f"{task}: score by distance", path))

    draw(figures, core_count(run_cfg.get("threads", "auto")) if workers == "auto" else int(workers))
    images += extra_images
    name = run_cfg.get("name", run_dir.name)
    rules = (f"Scores are percent (mean per-sample score; RULER's string_match_all / string_match_part or exact "
             f"match), with 95% intervals in the CSVs and heatmaps. Failed rows (nonfinite, oom, error) count as 0; "
             f"rows that could not run (unsupported_length, skipped_memory) leave a cell empty ('-'). "
             f"Effective length: the longest tested length L such that every tested length up to L scores >= "
             f"{threshold:g} (absolute, RULER) or >= {RELATIVE:.0%} of the pairing's score at its shortest length "
             f"(relative, NoLiMa; it says nothing when the score at the shortest length is itself near 0). {DEPTH_NOTE}")
    versions = manifest.get("versions", {})
    footer = (f"Rows: {len(df)} | seed: {manifest.get('seed')} | lceval {versions.get('lceval', '?')} | "
              f"git: {manifest.get('git_commit')}")
    sections: list[tuple[str, pd.DataFrame]] = []
    if ruler is not None:
        sections.append(("All tasks (RULER table: mean over tasks)", ruler))
    for task, t in summary.groupby("task", sort=False):
        tested = set(df.loc[df["task"] == task, "context_length"].astype(int))  # rows of any status, run or not
        untested = [c for c in t.columns if isinstance(c, int) and c not in tested]
        sections.append((task, t.drop(columns=["task", *untested])))
    if not agree.empty:
        sections.append(("Agreement with the oracle (per sample)", agree))
    sections += extra_sections
    md = [f"# lceval report: {name}", "", rules, ""]
    for title, t in sections:
        md += [f"## {title}", "", markdown_table(t), ""]
    md += ["## Figures", ""] + [f"![{title}]({p.name})" for title, p in images] + ["", footer, ""]
    (out / "summary.md").write_text("\n".join(md))
    details = [(f"{task}: every cell with n and 95% interval", cell_view(cells[cells["task"] == task]))
               for task in cells["task"].unique()]
    _html(out / "report.html", name, rules, sections, images, footer, details)
    return out / "summary.md"


def cell_view(cells: pd.DataFrame) -> pd.DataFrame:
    """Cells for reading: score and interval in percent, n, statuses; task-free columns dropped."""
    t = cells.dropna(axis=1, how="all").drop(columns=["task"])
    t = t.rename(columns={c: c.removeprefix("meta.") for c in t.columns})
    t["95% interval"] = [("-" if math.isnan(lo) else f"{100 * lo:.1f}-{100 * hi:.1f}")
                         for lo, hi in zip(t.pop("ci_low"), t.pop("ci_high"), strict=True)]
    return t


def _html(path: Path, name: str, rules: str, sections, images, footer: str, details=()) -> None:
    parts = [f"<!doctype html><meta charset='utf-8'><title>lceval: {html.escape(name)}</title>",
             "<style>body{font-family:sans-serif;max-width:1150px;margin:2em auto;line-height:1.4}"
             "table{border-collapse:collapse;margin-bottom:1em}td,th{border:1px solid #ccc;padding:3px 8px;"
             "text-align:right;white-space:nowrap}td:first-child,th:first-child{text-align:left}"
             "img{max-width:100%}.rules{background:#f6f6f6;padding:.6em 1em}summary{cursor:pointer}</style>",
             f"<h1>lceval report: {html.escape(name)}</h1>", f"<p class='rules'>{html.escape(rules)}</p>"]
    for title, t in sections:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts.append(formatted(t).to_html(index=False, escape=True))
    for title, t in details:
        parts.append(f"<details><summary>{html.escape(title)}</summary>")
        parts.append(formatted(t).to_html(index=False, escape=True) + "</details>")
    for title, p in images:
        data = base64.b64encode(p.read_bytes()).decode()
        parts.append(f"<h3>{html.escape(title)}</h3><img alt='{html.escape(title)}' src='data:image/png;base64,{data}'>")
    parts.append(f"<footer><hr><p>{html.escape(footer)}</p></footer>")
    path.write_text("\n".join(parts))
