"""The tables of reports/smollm2/README.md that lceval's report does not print itself, from the committed rows.

    python reports/smollm2/study_tables.py            # reads reports/smollm2/results.parquet

Every figure is a count of samples with a 95% Wilson interval; nothing is fitted.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent


def wilson(k: float, n: int, z: float = 1.96) -> str:
    if n == 0:
        return "-"
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return f"{100 * max(0.0, mid - half):.0f}-{100 * min(1.0, mid + half):.0f}%"


def score(g: pd.DataFrame) -> str:
    k, n = g["score"].sum(), len(g)
    return f"{k:g}/{n} ({wilson(k, n)})"


def markdown(t: pd.DataFrame) -> str:
    cols = list(t.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in t.itertuples(index=False)]
    return "\n".join(lines)


def depth_table(df: pd.DataFrame, task: str) -> pd.DataFrame:
    """Score by depth, pooled over the lengths 1k-8k, for flash (the exact reference)."""
    g = df[(df.pairing == "smol/flash") & (df.task == task)]
    rows = []
    for depth, d in g.groupby("meta.depth"):
        row = {"depth": f"{depth:g}"}
        for length, x in d.groupby("context_length"):
            row[str(length)] = f"{x['score'].sum():g}/{len(x)}"
        row["pooled"] = score(d)
        rows.append(row)
    return pd.DataFrame(rows)


VARIANTS = ("smol/window-1k", "smol/window-1k+4-sinks", "smol/window-2k", "smol/block-sparse", "smol/linear")
ROPE = {"smol/rope-none": "none", "smol_linear/flash": "linear (PI) x2", "smol_dynamic/flash": "dynamic NTK x2",
        "smol_yarn/flash": "YaRN x2"}


def variant_table(df: pd.DataFrame) -> pd.DataFrame:
    """Each pairing on niah_single_1 at the cells it ran: score, and its misses by diagnosis, split by whether
    the needle lay within the variant's reach. Flash is shown on the cells the windowed variants ran."""
    g = df[df.task == "niah_single_1"]
    ran = g[g.pairing.isin(VARIANTS[:-1])]
    flash = g[(g.pairing == "smol/flash") & g.context_length.isin(ran.context_length.unique())
              & g["meta.depth"].isin(ran["meta.depth"].unique())]
    rows = []
    for pairing, cells in [("smol/flash", flash)] + [(p, g[g.pairing == p]) for p in VARIANTS]:
        if cells.empty:
            continue
        reach = cells[cells.diagnosis != "out_of_reach"]
        rows.append({"pairing": pairing, "lengths": ",".join(str(x) for x in sorted(cells.context_length.unique())),
                     "all": score(cells), "needle in reach": score(reach),
                     "out_of_reach": int((cells.diagnosis == "out_of_reach").sum()),
                     "attended_but_wrong": int((cells.diagnosis == "attended_but_wrong").sum()),
                     "not_attended": int((cells.diagnosis == "not_attended").sum())})
    return pd.DataFrame(rows)


def rope_table(df: pd.DataFrame) -> pd.DataFrame:
    """niah_single_1 at the RoPE pairings' cells; at 2k, no scaling is the flash pairing (every sample there)."""
    g = df[df.task == "niah_single_1"]
    rope = g[g.pairing.isin(ROPE)]
    depths, lengths = rope["meta.depth"].unique(), sorted(rope.context_length.unique())
    rows = []
    for pairing, name in ROPE.items():
        row = {"RoPE": name}
        for length in lengths:
            d = g[(g.context_length == length) & g["meta.depth"].isin(depths)]
            d = d[d.pairing == (pairing if not (length == 2048 and pairing == "smol/rope-none") else "smol/flash")]
            row[str(length)] = score(d) if len(d) else "-"
        rows.append(row)
    return pd.DataFrame(rows)


def head_ranking(df: pd.DataFrame, length: int) -> tuple[pd.Series, int]:
    """Wu et al.'s retrieval score per (layer, head) for flash at one length (all tasks with value tokens), best
    first, and the number of samples it averages."""
    g = df[(df.pairing == "smol/flash") & (df.context_length == length) & (df.status == "ok")
           & df["meta.attention.value_tokens"].fillna(0).gt(0)]
    total: dict[tuple[int, int], float] = {}
    for heads, k in zip(g["meta.attention.copy_heads"], g["meta.attention.value_tokens"], strict=True):
        for layer, head, copied in heads if heads is not None else []:
            total[(int(layer), int(head))] = total.get((int(layer), int(head)), 0.0) + copied / k
    return pd.Series({h: v / len(g) for h, v in total.items()}, dtype=float).sort_values(ascending=False), len(g)


def heads_table(df: pd.DataFrame, top: int = 10) -> tuple[pd.DataFrame, str]:
    lengths = sorted(df[df.pairing == "smol/flash"].context_length.unique())
    ranks = {n: head_ranking(df, n) for n in lengths}
    rows = []
    for i in range(top):
        row = {"rank": i + 1}
        for n, (r, _) in ranks.items():
            row[f"{n} (n={ranks[n][1]})"] = f"{r.index[i][0]}.{r.index[i][1]} {r.iloc[i]:.2f}" if i < len(r) else "-"
        rows.append(row)
    notes = []
    base = set(ranks[lengths[0]][0].index[:top])
    for n in lengths[1:]:
        other = ranks[n][0]
        joint = ranks[lengths[0]][0].index.union(other.index)
        a = ranks[lengths[0]][0].reindex(joint, fill_value=0.0)
        b = other.reindex(joint, fill_value=0.0)
        rho = a.rank().corr(b.rank())
        notes.append(f"{lengths[0]} vs {n}: top-{top} overlap {len(base & set(other.index[:top]))}/{top}, "
                     f"Spearman {rho:.2f} over the {len(joint)} heads that copied at either length")
    return pd.DataFrame(rows), "; ".join(notes)


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "results.parquet"
    df = pd.read_parquet(path)
    for task in ("niah_single_1", "niah_single_2"):
        print(f"\n## depth, {task}, flash (score/samples per length; pooled with 95% Wilson interval)\n")
        print(markdown(depth_table(df, task)))
    print("\n## variants on niah_single_1 (the cells each ran)\n")
    print(markdown(variant_table(df)))
    print("\n## RoPE scaling on niah_single_1 (the RoPE pairings' depths)\n")
    print(markdown(rope_table(df)))
    table, note = heads_table(df)
    print("\n## retrieval heads by length (flash; layer.head score)\n")
    print(markdown(table))
    print(f"\n{note}")
    print("\n## stop reasons by pairing\n")
    print(markdown(df.groupby(["pairing", "stop_reason"]).size().unstack(fill_value=0).reset_index()))


if __name__ == "__main__":
    main()
