"""Figures of a report: heatmaps (score by length x depth) and curves (score by length or distance),
each written to its own PNG, drawn here or in a pool of fresh processes."""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def file_stem(*parts: str) -> str:
    """A readable, collision-free file name: a slug plus a short hash of the exact text."""
    text = "\x1f".join(parts)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", "_".join(parts)).strip("_")[:60]
    return f"{slug}-{hashlib.sha1(text.encode()).hexdigest()[:6]}"


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


def matrix_plot(values: np.ndarray, notes: list[list[str]], xticks: list[str], yticks: list[str], xlabel: str,
                ylabel: str, title: str, path: Path, *, cmap: str = "RdYlGn", colorbar: str = "",
                cell: tuple[float, float] = (1.35, 0.65)) -> None:
    """A matrix of values in [0, 1] with a note in each cell (NaN cells grey): the shared drawing of every
    report heatmap (score by length x depth; a task's own, e.g. alignment's AER by head)."""
    fig, ax = plt.subplots(figsize=(cell[0] * values.shape[1] + 2.8, cell[1] * values.shape[0] + 1.9))
    im = ax.imshow(np.ma.masked_invalid(values.astype(float)), cmap=matplotlib.colormaps[cmap].with_extremes(
        bad="#cccccc"), vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(values.shape[1]), xticks)
    ax.set_yticks(range(values.shape[0]), yticks)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            ax.text(j, i, notes[i][j], ha="center", va="center", fontsize=6.5)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=colorbar)
    ax.set_title(plot_text(title), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def heatmap(cells: pd.DataFrame, pairing: str, task: str, group: str, path: Path, label: str | None = None) -> None:
    """Score by length x ``group`` (depth) for one pairing and task, with interval and n in each cell."""
    sub = cells[(cells["pairing"] == pairing) & (cells["task"] == task)]
    acc = sub.pivot(index=group, columns="context_length", values="score").sort_index()
    n = sub.pivot(index=group, columns="context_length", values="n_ran").reindex_like(acc)
    lo = sub.pivot(index=group, columns="context_length", values="ci_low").reindex_like(acc)
    hi = sub.pivot(index=group, columns="context_length", values="ci_high").reindex_like(acc)
    status = sub.pivot(index=group, columns="context_length", values="status").reindex_like(acc)
    is_depth = group.endswith("depth")
    ends = {0.0: "\n(start)", 1.0: "\n(by the question)"}
    notes = [[str(status.values[i, j]).split("=")[0].replace("_", "\n") if math.isnan(acc.values[i, j]) else
              f"{acc.values[i, j]:.0%}\n[{lo.values[i, j]:.0%}-{hi.values[i, j]:.0%}]\nn={int(n.values[i, j])}"
              for j in range(acc.shape[1])] for i in range(acc.shape[0])]
    matrix_plot(acc.values, notes, [f"{int(c):,}" for c in acc.columns],
                [f"{d:.0%}{ends.get(float(d), '')}" if is_depth else str(d) for d in acc.index],
                "context length (tokens)", "needle depth" if is_depth else group.removeprefix("meta."),
                f"{task}: {label or pairing}", path, colorbar="score (95% interval, n)")


def log2_axis(ax) -> None:
    """A base-2 log x axis labelled with plain numbers (lengths, distances)."""
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


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
        log2_axis(ax)
        ticks = sorted(set(t[x].astype(float).round()))
        if len(ticks) <= 12:
            ax.set_xticks(ticks)
    ax.set_ylim(-0.02, 1.02)
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("score (95% interval)" if bands else f"score (intervals in the CSVs: {len(groups)} pairings)")
    ax.set_title(plot_text(title))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, ncol=ncol)
    fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)


PARALLEL_FIGURES = 16  # fewer figures are drawn in this process (starting a drawing process takes about 2 s)


def plan_figures(df: pd.DataFrame, cells: pd.DataFrame, lengths: pd.DataFrame, dist: pd.DataFrame, manifest: dict,
                 out: Path) -> tuple[list[tuple], list[tuple[str, Path]]]:
    """Every figure of a report as (draw function, arguments), and (title, path) of each for the pages: a
    heatmap per task and pairing (and per value of a task's other group keys), curves by length and distance."""
    from lceval.report.tables import task_groups

    images: list[tuple[str, Path]] = []
    figures: list[tuple] = []
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
    return figures, images


def layout_plot(attention, n_blocks: int, path: Path, causal: bool = True) -> None:
    """A block-sparse variant's layout as a PNG (query blocks down, key blocks across)."""
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(attention.layout(n_blocks, causal).numpy(), cmap="Greys", vmin=0, vmax=1)
    ax.set_xlabel("key block")
    ax.set_ylabel("query block")
    ax.set_title(plot_text(attention.label), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def retrieval_figures(retrieval: pd.DataFrame, out: Path) -> tuple[list[tuple], list[tuple[str, Path]]]:
    """A layer x head picture of the retrieval scores per pairing (``retrieval_heads.csv``)."""
    figures, images = [], []
    if retrieval.empty:
        return figures, images
    for pairing, g in retrieval.groupby("pairing", sort=False):
        values = g.pivot(index="layer", columns="head", values="score").sort_index().to_numpy()
        notes = [[f"{v:.2f}" if v >= 0.005 else "" for v in row] for row in values]
        path = out / f"retrieval_heads_{file_stem(pairing)}.png"
        title = f"retrieval score per head (Wu et al. 2024), n={int(g['n'].iloc[0])}: {pairing}"
        figures.append((matrix_plot, (values, notes, [str(h) for h in range(values.shape[1])],
                                      [str(layer) for layer in range(values.shape[0])], "head", "layer", title, path),
                        {"cmap": "Blues", "colorbar": "share of the needle's value tokens copied",
                         "cell": (0.45, 0.22)}))
        images.append((f"retrieval heads: {pairing}", path))
    return figures, images


def _draw_one(job: tuple) -> None:
    fn, args, *kwargs = job
    fn(*args, **(kwargs[0] if kwargs else {}))


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
