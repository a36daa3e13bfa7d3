"""Reports from stored rows: tidy tables, heatmaps, curves, effective length, agreement.

The package: ``tables`` (statistics and tables, pandas only), ``figures`` (heatmaps and curves),
``page`` (``summary.md`` and ``report.html``); ``build_report`` runs them as a pipeline: frame, tables,
figures, page.

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

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lceval import registry
from lceval.config import ReportSpec
from lceval.cores import core_count
from lceval.errors import UserError
from lceval.report.figures import draw, plan_figures, retrieval_figures
from lceval.report.page import write_pages
from lceval.report.tables import (
    agreement_table,
    cell_table,
    diagnosis_table,
    distance_table,
    length_table,
    load_frame,
    retrieval_table,
    rounded,
    ruler_table,
    summary_table,
    write_results,
)
from lceval.store import read_manifest
from lceval.task import ReportPart


@dataclass
class Tables:
    """Every table of a report (each also written as CSV)."""

    cells: pd.DataFrame
    lengths: pd.DataFrame
    distance: pd.DataFrame
    summary: pd.DataFrame
    agreement: pd.DataFrame
    ruler: pd.DataFrame | None = None
    diagnosis: pd.DataFrame = field(default_factory=pd.DataFrame)  # why needles were missed
    retrieval: pd.DataFrame = field(default_factory=pd.DataFrame)  # retrieval score per head
    tasks: ReportPart = field(default_factory=ReportPart)  # the tasks' own sections and figures


def build_report(run_dir: Path, threshold: float | None = None, workers: int | str = 1, warn=None) -> Path:
    """Write ``report/`` inside the run directory; returns the summary path.

    ``threshold`` (percent) overrides the run's ``report.threshold`` for this report. With ``workers`` > 1 (or
    "auto": the run's ``run.threads`` rule, as the CLI passes) and at least ``PARALLEL_FIGURES`` figures, the
    figures are drawn in that many fresh processes. Those import the caller's main module, so a script that calls
    this with workers needs the ``if __name__ == "__main__":`` guard; the default draws here. Only the rows of
    the manifest's run id are reported; ``warn`` (a callable taking a line) hears how many others were left out.
    """
    run_dir = Path(run_dir)
    try:
        manifest = read_manifest(run_dir)  # a damaged manifest only loses the report's labels, never the rows
        spec = report_spec(manifest, threshold)
        df = load_frame(run_dir, manifest.get("run_id"), warn)
        out = run_dir / "report"
        out.mkdir(exist_ok=True)
        tables = write_tables(df, manifest, spec, out)
        figures, images = plan_figures(df, tables.cells, tables.lengths, tables.distance, manifest, out)
        heads, head_images = retrieval_figures(tables.retrieval, out)
        figures, images = figures + heads, images + head_images
        threads = manifest.get("config", {}).get("run", {}).get("threads", "auto")
        draw(figures, core_count(threads) if workers == "auto" else int(workers))
        return write_pages(df, manifest, spec, tables, images + tables.tasks.images, out,
                           name=manifest.get("config", {}).get("run", {}).get("name", run_dir.name))
    except OSError as exc:  # a full disk while drawing a figure names no file: name the report folder
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(run_dir / "report")) from None
        raise


def report_spec(manifest: dict, threshold: float | None = None) -> ReportSpec:
    """The run's report settings (the config's defaults where the manifest has none); ``threshold`` overrides."""
    try:
        spec = ReportSpec.model_validate(manifest.get("config", {}).get("report", {}) or {})
    except ValueError:  # a hand-edited manifest: its labels are lost, never the report
        spec = ReportSpec()
    return spec if threshold is None else spec.model_copy(update={"threshold": float(threshold)})


def write_tables(df: pd.DataFrame, manifest: dict, spec: ReportSpec, out: Path) -> Tables:
    """Compute every table and write each as CSV; then the tasks' own pieces."""
    write_results(df, out)
    lengths = length_table(df)
    tables = Tables(cells=cell_table(df, manifest), lengths=lengths,
                    distance=distance_table(df, spec.distance_bins, manifest),
                    summary=summary_table(df, spec.threshold, lengths), agreement=agreement_table(df),
                    ruler=ruler_table(df, spec.threshold, lengths) if df["task"].nunique() > 1 else None,
                    diagnosis=diagnosis_table(df), retrieval=retrieval_table(df))
    for name, t in (("cells", tables.cells), ("distance", tables.distance), ("summary", tables.summary),
                    ("ruler", tables.ruler), ("agreement", tables.agreement), ("diagnosis", tables.diagnosis),
                    ("retrieval_heads", tables.retrieval)):
        if t is not None and not (name in ("diagnosis", "retrieval_heads") and t.empty):
            rounded(t).to_csv(out / f"{name}.csv", index=False)
    tables.tasks = task_reports(df, out)
    return tables


def task_reports(df: pd.DataFrame, out: Path) -> ReportPart:
    """Each task's own report part (``Task.report``); a task whose plugin is not installed is skipped."""
    parts = ReportPart()
    for task in df["task"].unique():
        try:
            cls = registry.tasks.get(task)
        except UserError:
            continue
        part = cls.report(df[df["task"] == task].dropna(axis=1, how="all"), out)
        parts.sections += part.sections
        parts.images += part.images
    return parts
