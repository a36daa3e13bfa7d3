"""Report arithmetic: Wilson intervals, effective length, cell table."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from lceval.report import cell_table, effective_length, markdown_table, summary_table, wilson


def test_wilson_known_values():
    lo, hi = wilson(8, 10)
    assert math.isclose(float(lo), 0.4902, abs_tol=1e-4) and math.isclose(float(hi), 0.9433, abs_tol=1e-4)
    lo, hi = wilson(0, 10)
    assert float(lo) == 0 and math.isclose(float(hi), 0.2775, abs_tol=1e-4)
    lo, hi = wilson(10, 10)
    assert math.isclose(float(lo), 0.7225, abs_tol=1e-4) and math.isclose(float(hi), 1.0)
    assert np.isnan(wilson(0, 0)[0])


def rows(spec):
    out = []
    for L, depth, correct, status in spec:
        out.append({"pairing": "p", "task": "t", "context_length": L, "depth": depth, "sample_id": str(len(out)),
                    "correct": correct, "status": status, "distance": L // 2})
    return pd.DataFrame(out)


def test_cells_ignore_non_ok_rows_and_effective_length():
    df = rows([(64, 0.5, True, "ok")] * 9 + [(64, 0.5, False, "ok")]
              + [(128, 0.5, True, "ok")] * 8 + [(128, 0.5, False, "ok")] * 2
              + [(256, 0.5, True, "ok")] * 9 + [(256, 0.5, False, "ok")]
              + [(512, 0.5, False, "unsupported_length")] * 10)
    cells = cell_table(df).set_index("context_length")
    assert cells.loc[64, "accuracy"] == 0.9 and cells.loc[128, "accuracy"] == 0.8
    assert np.isnan(cells.loc[512, "accuracy"]) and cells.loc[512, "status"] == "unsupported_length"
    s = summary_table(df, 85.6).iloc[0]
    assert s["effective_length"] == 256  # longest length with accuracy >= 85.6% (128 fails, 256 passes)
    assert s["not_ok"] == "unsupported_length=10"
    assert effective_length(pd.DataFrame({"context_length": [64], "accuracy": [0.5]}), 0.856) is None


def test_markdown_formats_lengths_and_accuracies():
    df = pd.concat([rows([(64, 0.5, True, "ok")] * 9 + [(128, 0.5, False, "ok")] * 9),
                    rows([(64, 0.5, False, "ok")] * 9).assign(pairing="q")])
    md = markdown_table(summary_table(df, 85.6).drop(columns="task"))
    assert "| p | 50.0% | 100.0% | 0.0% | 64 |" in md  # effective length 64, not a percentage
    assert "| q | 0.0% | 0.0% | - | - |" in md
