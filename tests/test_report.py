"""Report arithmetic: intervals, effective length (absolute and relative), failed rows, RULER and agreement tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from lceval.report.figures import file_stem
from lceval.report.page import markdown_table
from lceval.report.tables import agreement_table, cell_table, effective_length, frame, ruler_table, summary_table, wilson


def test_wilson_known_values():
    lo, hi = wilson(8, 10)
    assert math.isclose(float(lo), 0.4902, abs_tol=1e-4) and math.isclose(float(hi), 0.9433, abs_tol=1e-4)
    lo, hi = wilson(0, 10)
    assert float(lo) == 0 and math.isclose(float(hi), 0.2775, abs_tol=1e-4)
    assert np.isnan(wilson(0, 0)[0])


def rows(spec, pairing="p", task="t"):
    out = []
    for L, depth, score, status in spec:
        out.append({"pairing": pairing, "task": task, "model": "m", "attention": "full", "context_length": L,
                    "meta": {"depth": depth, "distance": L // 2}, "sample_id": f"{L}/{len(out)}", "score": score,
                    "correct": score == 1.0, "status": status, "prediction": "x", "answer_logprob": -1.0})
    return out


MANIFEST = {"tasks": {"t": {"group_by": ["depth"], "distance_key": "distance"}}}


def test_failed_rows_count_as_wrong_and_unrun_cells_stay_empty():
    df = frame(rows([(64, 0.5, 0.0, "nonfinite")] * 9 + [(64, 0.5, 1.0, "ok")]
                    + [(128, 0.5, 1.0, "ok")] * 10 + [(256, 0.5, 0.0, "unsupported_length")] * 10))
    cells = cell_table(df, MANIFEST).set_index("context_length")
    assert cells.loc[64, "score"] == 0.1  # 9 non-finite rows and 1 correct row: 10%, not 100%
    assert cells.loc[64, "status"] == "nonfinite=9,ok=1"
    assert np.isnan(cells.loc[256, "score"]) and cells.loc[256, "n_ran"] == 0
    s = summary_table(df, 85.6).iloc[0]
    assert s["effective_length"] is None  # the shortest length already fails
    assert np.isnan(s["mean"])  # a mean over a partial grid is not shown
    assert "nonfinite=9" in s["not_ok"] and "unsupported_length=10" in s["not_ok"]


def curve(points):
    return pd.DataFrame(points, columns=["context_length", "score"])


def test_effective_length_is_the_longest_prefix_that_passes():
    non_monotone = curve([(64, 0.95), (128, 0.80), (256, 0.90), (512, 0.95)])
    assert effective_length(non_monotone, 0.856) == 64  # 256 and 512 pass, but 128 fails before them
    assert effective_length(curve([(64, 0.95), (128, 0.90), (256, 0.50)]), 0.856) == 128
    assert effective_length(curve([(64, 0.5)]), 0.856) is None
    assert effective_length(curve([(64, 0.95), (128, math.nan), (256, 0.99)]), 0.856) == 64  # not run: not passed


def test_relative_effective_length_uses_the_shortest_length():
    c = curve([(64, 0.60), (128, 0.55), (256, 0.50), (512, 0.20)])
    assert effective_length(c, 0.856) is None  # never above RULER's absolute threshold
    assert effective_length(c, 0.85, relative=True) == 128  # 0.55 >= 0.51 (85% of 0.60); 0.50 < 0.51
    assert effective_length(curve([(64, 0.0), (128, 0.0)]), 0.85, relative=True) is None


def test_ruler_table_averages_tasks_per_length():
    df = frame(rows([(64, 0.0, 1.0, "ok")] * 10 + [(128, 0.0, 1.0, "ok")] * 5 + [(128, 0.0, 0.0, "ok")] * 5, task="a")
               + rows([(64, 0.0, 0.5, "ok")] * 10 + [(128, 0.0, 0.0, "ok")] * 10, task="b"))
    t = ruler_table(df, 85.6).iloc[0]
    assert t[64] == 0.75 and t[128] == 0.25 and t["tasks"] == 2 and t["effective_length"] is None
    assert t["mean"] == 0.5


def test_agreement_with_the_oracle():
    full = rows([(64, 0.0, 1.0, "ok")] * 4, pairing="m/full")
    win = rows([(64, 0.0, 1.0, "ok")] * 3 + [(64, 0.0, 0.0, "ok")], pairing="m/win")
    for r in win:
        r["attention"] = "sliding_window"
    win[3]["prediction"], win[3]["answer_logprob"] = "y", -3.5
    t = agreement_table(frame(full + win)).iloc[0]
    assert t["pairing"] == "m/win" and t["oracle"] == "m/full" and t["agree"] == 0.75 and t["changed"] == 1
    assert t["max_logprob_diff"] == 2.5


def test_markdown_formats_lengths_and_scores():
    df = frame(rows([(64, 0.5, 1.0, "ok")] * 9 + [(128, 0.5, 0.0, "ok")] * 9)
               + rows([(64, 0.5, 0.0, "ok")] * 9, pairing="q"))
    md = markdown_table(summary_table(df, 85.6).drop(columns="task"))
    assert "| p | 100.0 | 0.0 | 50.0 | 64 | 64 |" in md
    assert "| q | 0.0 | - | 0.0 | - | - |" in md  # tested at 64 only: 128 shows "-"


def test_file_names_never_collide():
    assert file_stem("niah", "mine (v1)") != file_stem("niah", "mine [v1]")
    assert file_stem("niah", "a/b") != file_stem("niah", "a_b")


def test_labels_in_any_script_render_without_glyph_warnings(tmp_path, recwarn):
    from lceval.report.figures import curve_plot, plot_text

    assert plot_text("model/flash") == "model/flash" and plot_text("é") == "é"
    assert plot_text("模型") == "\\u6a21\\u578b"  # no CJK font here: escaped, never a missing-glyph warning
    t = pd.DataFrame({"pairing": ["模型/flash", "modèle/full", "модель/full"], "context_length": [64, 64, 64],
                      "score": [0.5, 0.5, 1.0], "ci_low": [0.2] * 3, "ci_high": [0.8] * 3})
    curve_plot(t, "context_length", "Длина", "tokens", tmp_path / "c.png", log=True)
    assert (tmp_path / "c.png").stat().st_size > 1000
    assert not [w for w in recwarn if "Glyph" in str(w.message)]


def test_a_length_no_pairing_could_run_keeps_its_column(tmp_path):
    import json

    from lceval.report import build_report

    rows_ = rows([(64, 0.5, 1.0, "ok")] * 4 + [(128, 0.5, 0.0, "unsupported_length")] * 4, pairing="learned/flash")
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows_))
    (tmp_path / "manifest.json").write_text(json.dumps(MANIFEST))
    md = build_report(tmp_path).read_text()
    assert "| pairing | 64 | 128 | mean |" in md  # the length that could not run is shown, not dropped
    assert "| learned/flash | 100.0 | - | - |" in md  # its cell is empty and the mean is not over half a grid


def test_figures_drawn_in_worker_processes_are_the_bytes_drawn_here(tmp_path, monkeypatch):
    import concurrent.futures
    import json
    import shutil

    import lceval.report.figures
    from lceval.report import build_report

    spec = [(L, d, float((L + int(10 * d)) % 3 == 0), "ok") for L in (64, 128) for d in (0.0, 0.5, 1.0)] * 2
    rows_ = [r for p in ("a/flash", "b/flash", "c/full", "d/linear", "e/sparse") for r in rows(spec, pairing=p)]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows_))
    (tmp_path / "manifest.json").write_text(json.dumps(MANIFEST))
    build_report(tmp_path, workers=1)
    here = tmp_path / "here"
    shutil.move(tmp_path / "report", here)
    pools = []

    class Spy(concurrent.futures.ProcessPoolExecutor):
        def __init__(self, *a, **kw):
            pools.append(kw["max_workers"])
            super().__init__(*a, **kw)

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", Spy)
    monkeypatch.setattr(lceval.report.figures, "PARALLEL_FIGURES", 0)  # 7 figures: 5 heatmaps, length and distance curves
    build_report(tmp_path, workers=2)
    assert pools == [2]
    drawn = sorted(p.name for p in (tmp_path / "report").glob("*.png"))
    assert len(drawn) == 7 and drawn == sorted(p.name for p in here.glob("*.png"))
    for name in [*drawn, "summary.md", "report.html", "cells.csv"]:
        assert (tmp_path / "report" / name).read_bytes() == (here / name).read_bytes(), name
    from click.testing import CliRunner

    from lceval.cli import main

    (tmp_path / "manifest.json").write_text(json.dumps({**MANIFEST, "config": {"run": {"threads": 3}}}))
    assert CliRunner().invoke(main, ["report", str(tmp_path)]).exit_code == 0
    assert pools == [2, 3]  # the command line follows the run's run.threads
    build_report(tmp_path)  # from Python, by default: drawn in this process
    assert pools == [2, 3]

    class NoProcesses:
        def __init__(self, *a, **kw):
            raise OSError("no /dev/shm here")

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", NoProcesses)
    shutil.rmtree(tmp_path / "report")
    build_report(tmp_path, workers=2)  # where processes cannot start, the figures are drawn here
    assert all((tmp_path / "report" / name).read_bytes() == (here / name).read_bytes() for name in drawn)


def test_a_curve_plot_of_many_pairings_shows_every_legend_entry(tmp_path, monkeypatch, recwarn):
    import matplotlib.collections
    import matplotlib.pyplot as plt

    from lceval.report.figures import BAND_PAIRINGS, LEGEND_ROWS, curve_plot

    figs = []
    monkeypatch.setattr(plt, "close", figs.append)
    for n in (3, 70):
        t = pd.DataFrame([{"pairing": f"model-{i:02d}-a-long-name/sliding_window(w=16)", "context_length": L,
                           "score": (i % 7) / 7, "ci_low": 0.0, "ci_high": 1.0} for i in range(n) for L in (64, 128)])
        curve_plot(t, "context_length", "t", "tokens", tmp_path / f"c{n}.png", log=True)
    few, many = (f.axes[0] for f in figs)
    assert len(many.get_legend().get_texts()) == 70 and many.get_legend()._ncols == -(-70 // LEGEND_ROWS) == 2
    assert figs[1].get_size_inches()[1] > figs[0].get_size_inches()[1]  # taller, to hold 35 entries a column
    bands = [sum(isinstance(c, matplotlib.collections.PolyCollection) for c in ax.collections) for ax in (few, many)]
    assert bands == [3, 0] and 3 <= BAND_PAIRINGS < 70  # 70 overlaid bands would hide the lines
    assert not [w for w in recwarn if "layout" in str(w.message)]  # the legend is never squeezed out
    monkeypatch.undo()
    for f in figs:
        plt.close(f)
