"""The report page's sample browser: a clickable score grid per task and pairing that opens a cell's samples.

Each sample shows the text around its needle (the needle highlighted), the end of the prompt (the
question), the references and the prediction, its score, stop reason and diagnosis, and an attention strip:
the weights of the head with the most mass on the needle, over the whole context (max-pooled to bins), the
needle's bins marked. Everything is embedded in the page as JSON and drawn by a short script written here
(inline SVG): no network request. ``#open=KEY`` in the page's address opens that cell on load.
"""

from __future__ import annotations

import html
import json
import math

import pandas as pd

PER_CELL = 12  # samples kept per cell in the page (the page stays small whatever the run's size)
PREDICTION_CHARS = 300

SCRIPT = """
const data = JSON.parse(document.getElementById('lceval-samples').textContent);
function esc(s) { const d = document.createElement('div'); d.textContent = s == null ? '' : String(s); return d.innerHTML; }
function strip(w, marks) {
  if (!w) return '';
  const n = w.length, top = Math.max(...w, 1e-9);
  let bars = '';
  for (const [a, b] of marks || []) bars += `<rect x="${a * 4}" y="0" width="${(b - a) * 4}" height="40" fill="#fde68a"/>`;
  w.forEach((v, i) => {
    const h = 38 * v / top;
    bars += `<rect x="${i * 4}" y="${40 - h}" width="3" height="${h}" fill="#1d4ed8"/>`;
  });
  return `<svg class="strip" width="${n * 4}" height="40" role="img" aria-label="attention strip">${bars}</svg>`;
}
function openCell(key) {
  const panel = document.getElementById('lceval-panel');
  const samples = data[key] || [];
  let out = `<h3 class="cell-title">${esc(key)}: ${samples.length} sample(s)</h3>`;
  for (const s of samples) {
    out += `<div class="sample" data-id="${esc(s.id)}"><p><b>${esc(s.id)}</b> score ${esc(s.score)}` +
      ` | stop ${esc(s.stop_reason)}` +
      ` | <span class="diagnosis">${esc(s.diagnosis)}</span> | best head ${esc(s.best_head)} (mass ${esc(s.best_mass)})</p>` +
      `<p class="context">…${esc(s.before)}<mark>${esc(s.needle)}</mark>${esc(s.after)}…</p>` +
      `<p class="question">…${esc(s.question)}</p><p>references: ${esc((s.references || []).join(' | '))}</p>` +
      `<p>prediction: <span class="prediction">${esc(s.prediction)}</span></p>${strip(s.strip, s.strip_needle)}</div>`;
  }
  panel.innerHTML = out;
  panel.scrollIntoView();
}
document.querySelectorAll('button.cell').forEach(b => b.addEventListener('click', () => openCell(b.dataset.key)));
if (location.hash.startsWith('#open=')) {
  const key = decodeURIComponent(location.hash.slice(6));
  const button = [...document.querySelectorAll('button.cell')].find(b => b.dataset.key === key);
  if (button) button.click();
}
"""

STYLE = ("button.cell{width:74px;height:34px;border:1px solid #999;cursor:pointer;font-size:12px}"
         ".sample{border-top:1px solid #ddd;padding:.3em 0}.context,.question{font-family:monospace;"
         "white-space:pre-wrap;font-size:12px;background:#f8f8f8;padding:4px}mark{background:#fde68a}"
         "table.grid td{border:none;padding:1px}")


def cell_key(task: str, pairing: str, length, depth) -> str:
    return f"{task} | {pairing} | L={int(length)} | depth={float(depth):g}"


def _colour(score: float) -> str:
    if math.isnan(score):
        return "#ddd"
    return f"hsl({int(120 * score)},70%,{80 - 25 * score:.0f}%)"


def sample_record(row) -> dict:
    def get(col, default=None):
        v = row.get(col, default)
        return default if isinstance(v, float) and math.isnan(v) else v

    prediction = get("prediction") or ""
    return {"id": get("sample_id"), "score": round(float(get("score", 0.0)), 3), "stop_reason": get("stop_reason"),
            "diagnosis": get("diagnosis"), "references": list(get("references") or []),
            "prediction": prediction[:PREDICTION_CHARS] + ("…" if len(prediction) > PREDICTION_CHARS else ""),
            "before": get("meta.context.before"), "needle": get("meta.context.needle"),
            "after": get("meta.context.after"), "question": get("meta.context.question"),
            "best_head": get("meta.attention.best_head"), "best_mass": get("meta.attention.best_mass"),
            "strip": get("meta.attention.strip"), "strip_needle": get("meta.attention.strip_needle")}


def samples_section(df: pd.DataFrame) -> str:
    """The sample browser's HTML (grids, the panel, the data and the script); empty when no row has a depth."""
    if "meta.depth" not in df or "meta.context.needle" not in df:
        return ""
    rows = df[df["meta.depth"].notna() & df["meta.context.needle"].notna()]
    if rows.empty:
        return ""
    data: dict[str, list[dict]] = {}
    parts = ["<h2>Samples by cell</h2><p>Click a cell to open its samples: the needle in its context, the "
             "prediction, the diagnosis and the attention strip of the head with the most mass on the needle "
             "(blue: its weights over the context; yellow: the needle).</p>"]
    for (task, pairing), g in rows.groupby(["task", "pairing"], sort=False):
        lengths = sorted(g["context_length"].astype(int).unique())
        depths = sorted(g["meta.depth"].astype(float).unique())
        grid = [f"<h3>{html.escape(task)}: {html.escape(pairing)}</h3><table class='grid'><tr><td></td>"
                + "".join(f"<td>{n:,}</td>" for n in lengths) + "</tr>"]
        for d in depths:
            grid.append(f"<tr><td>{d:.0%}</td>")
            for n in lengths:
                cell = g[(g["context_length"] == n) & (g["meta.depth"] == d)]
                key = cell_key(task, pairing, n, d)
                data[key] = [sample_record(r) for r in cell.head(PER_CELL).to_dict("records")]
                score = float(cell["value"].mean()) if len(cell) else math.nan
                label = "-" if math.isnan(score) else f"{score:.0%}"
                grid.append(f"<td><button class='cell' style='background:{_colour(score)}' "
                            f"data-key='{html.escape(key, quote=True)}'>{label}</button></td>")
            grid.append("</tr>")
        parts.append("".join(grid) + "</table>")
    payload = json.dumps(data, default=str).replace("</", "<\\/")
    parts.append("<div id='lceval-panel'></div>")
    parts.append(f"<script type='application/json' id='lceval-samples'>{payload}</script>")
    parts.append(f"<script>{SCRIPT}</script>")
    return "\n".join(parts)
