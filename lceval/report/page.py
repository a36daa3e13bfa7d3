"""The report's pages: tables formatted for reading, ``summary.md`` and the self-contained ``report.html``."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import pandas as pd

from lceval.report.samples import STYLE

DEPTH_NOTE = ("Depth: 0% puts the needle at the start of the context, farthest from the question; "
              "100% puts it right before the question.")


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


def cell_view(cells: pd.DataFrame) -> pd.DataFrame:
    """Cells for reading: score and interval in percent, n, statuses; task-free columns dropped."""
    t = cells.dropna(axis=1, how="all").drop(columns=["task"])
    t = t.rename(columns={c: c.removeprefix("meta.") for c in t.columns})
    t["95% interval"] = [("-" if math.isnan(lo) else f"{100 * lo:.1f}-{100 * hi:.1f}")
                         for lo, hi in zip(t.pop("ci_low"), t.pop("ci_high"), strict=True)]
    return t


def write_pages(df: pd.DataFrame, manifest: dict, spec, tables, images: list[tuple[str, Path]], out: Path,
                name: str) -> Path:
    """``summary.md`` and ``report.html``: the rules, the tables (RULER's, per task, agreement, the tasks' own),
    the figures; returns the summary's path."""
    from lceval.report.tables import RELATIVE

    rules = (f"Scores are percent (mean per-sample score; RULER's string_match_all / string_match_part or exact "
             f"match), with 95% intervals in the CSVs and heatmaps. Failed rows (nonfinite, oom, error) count as 0; "
             f"rows that could not run (unsupported_length, skipped_memory) leave a cell empty ('-'). "
             f"Effective length: the longest tested length L such that every tested length up to L scores >= "
             f"{spec.threshold:g} (absolute, RULER) or >= {RELATIVE:.0%} of the pairing's score at its shortest length "
             f"(relative, NoLiMa; it says nothing when the score at the shortest length is itself near 0). {DEPTH_NOTE}")
    versions = manifest.get("versions", {})
    footer = (f"Rows: {len(df)} | seed: {manifest.get('seed')} | lceval {versions.get('lceval', '?')} | "
              f"git: {manifest.get('git_commit')}")
    sections: list[tuple[str, pd.DataFrame]] = []
    if tables.ruler is not None:
        sections.append(("All tasks (RULER table: mean over tasks)", tables.ruler))
    for task, t in tables.summary.groupby("task", sort=False):
        tested = set(df.loc[df["task"] == task, "context_length"].astype(int))  # rows of any status, run or not
        untested = [c for c in t.columns if isinstance(c, int) and c not in tested]
        sections.append((task, t.drop(columns=["task", *untested])))
    if not tables.agreement.empty:
        sections.append(("Agreement with the oracle (per sample)", tables.agreement))
    sections += diagnosis_sections(tables.diagnosis, tables.retrieval)
    sections += tables.tasks.sections
    md = [f"# lceval report: {name}", "", rules, ""]
    for title, t in sections:
        md += [f"## {title}", "", markdown_table(t), ""]
    md += ["## Figures", ""] + [f"![{title}]({p.name})" for title, p in images] + ["", footer, ""]
    (out / "summary.md").write_text("\n".join(md))
    cells = tables.cells
    details = [(f"{task}: every cell with n and 95% interval", cell_view(cells[cells["task"] == task]))
               for task in cells["task"].unique()]
    from lceval.report.samples import samples_section

    _html(out / "report.html", name, rules, sections, images, footer, details, samples_section(df))
    return out / "summary.md"


def diagnosis_sections(diagnosis: pd.DataFrame, retrieval: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Why needles were missed (per task and pairing, over every length; per length in diagnosis.csv) and the
    strongest retrieval heads of each pairing (every head in retrieval_heads.csv)."""
    out = []
    if not diagnosis.empty:
        totals = diagnosis.drop(columns=[c for c in ("context_length", "depth") if c in diagnosis]).groupby(
            ["task", "pairing"], sort=False).sum()
        out.append(("Why needles were missed (rows by diagnosis, every cell; per length and depth in diagnosis.csv)",
                    totals.reset_index()))
    if not retrieval.empty:
        top = (retrieval.sort_values("score", ascending=False, kind="stable").groupby("pairing", sort=False)
               .head(5).sort_values(["pairing", "score"], ascending=[True, False], kind="stable"))
        out.append(("Retrieval heads (Wu et al. 2024): the 5 best per pairing", top[top["score"] > 0]))
    return out


def _html(path: Path, name: str, rules: str, sections, images, footer: str, details=(), samples: str = "") -> None:
    parts = [f"<!doctype html><meta charset='utf-8'><title>lceval: {html.escape(name)}</title>",
             "<style>body{font-family:sans-serif;max-width:1150px;margin:2em auto;line-height:1.4}"
             "table{border-collapse:collapse;margin-bottom:1em}td,th{border:1px solid #ccc;padding:3px 8px;"
             "text-align:right;white-space:nowrap}td:first-child,th:first-child{text-align:left}"
             "img{max-width:100%}.rules{background:#f6f6f6;padding:.6em 1em}summary{cursor:pointer}"
             + STYLE + "</style>",
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
    if samples:
        parts.append(samples)
    parts.append(f"<footer><hr><p>{html.escape(footer)}</p></footer>")
    path.write_text("\n".join(parts))
