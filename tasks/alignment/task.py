"""The ``alignment`` task: translation and word alignment read from attention, by position in a long document.

A document of sentence pairs (``document.py``, both layouts) at an exact token
length; one pair, the focus, sits at the cell's depth. One teacher-forced pass
scores it:

* **translation**: every token of the focus translation is a labelled position
  (``label_accuracy``: is the gold token the argmax?);
* **alignment**: for each target word, the attention row of the position that
  predicts its first token is captured in every layer and head (and their mean).
  The predicted link is the source word, among all source words of the document,
  with the largest summed weight over its tokens. A link to a word of another
  sentence is a wrong link: it counts in |A| and never in S or P.

Each row's meta holds, per layer and head (``L0H1``) and for the mean
(``mean``), the AER counts (``a``, ``s``, ``a_and_s``, ``a_and_p``), the
predicted links as ``[source word, target word]`` (-1: outside the focus pair),
so AER can be summed over any cell and recomputed, and the summed weights of
each target word on the focus source words (``focus_weights``, for the
attention picture), beside the focus pair's words.

``data: {source, target, gold}`` replaces the built-in language pair with your
own parallel text and Pharaoh gold links (``parallel.py``).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pydantic

from lceval import metrics
from lceval.task import Length, Sample, Samples, Task, TaskConfig, TrainingExample
from lceval.tasks.alignment.document import PAD, SRC, TGT, build_document, vocabulary
from lceval.tasks.alignment.parallel import ParallelData


class AlignmentConfig(TaskConfig):
    lengths: list[Length] = pydantic.Field(default_factory=lambda: [128, 256, 512])
    depths: list[pydantic.confloat(ge=0, le=1)] = pydantic.Field(default_factory=lambda: [0.0, 0.5, 1.0])
    samples: Samples = 10
    layouts: list[Literal["concatenated", "interleaved"]] = pydantic.Field(
        default_factory=lambda: ["concatenated", "interleaved"],
        description="concatenated: sources then translations (distance grows); interleaved: the control")
    data: ParallelData | None = pydantic.Field(
        None, description="your own parallel text and Pharaoh gold links instead of the built-in language pair")


class Alignment(Task):
    name = "alignment"
    version = "3"
    Config = AlignmentConfig
    metric = "label_accuracy"
    max_new_tokens = 1
    stop_words = ()
    group_by = ("depth", "layout")
    distance_key = "distance"

    config: AlignmentConfig

    @property
    def pairs(self):
        """The user's sentence pairs, or None for the built-in language pair."""
        return None if self.config.data is None else self.config.data.pairs

    def vocabulary(self) -> list[str]:
        if self.pairs is None:
            return vocabulary()
        words = {w for p in self.pairs for w in (*p.source, *p.target)}
        return sorted(words | {SRC, TGT, PAD, "."})  # "." is the fallback padding word

    def cells(self) -> list[dict[str, Any]]:
        return [{"context_length": n, "depth": d, "layout": lay} for lay in self.config.layouts
                for n in self.config.lengths for d in self.config.depths]

    def cell_samples(self, cell: dict[str, Any], tokenizer, n: int) -> list[Sample]:
        length, depth, layout = cell["context_length"], cell["depth"], cell["layout"]
        out = []
        for i in range(n):
            doc = build_document(self.rng(layout, length, float(depth), i), tokenizer, length, float(depth), layout,
                                 self.pairs)
            self.check_known(tokenizer, doc.ids, "a document")
            tgt = doc.tgt_spans[doc.focus]
            positions = [t - 1 for a, b in tgt for t in range(a, b)]
            gold = doc.pairs[doc.focus].gold
            meta = {"depth": float(depth), "realized_depth": round(doc.depth, 4), "layout": layout,
                    "distance": tgt[0][0] - doc.src_spans[doc.focus][0][0],
                    "sample": i, "source_words": doc.pairs[doc.focus].source,
                    "target_words": doc.pairs[doc.focus].target,
                    # working data for read_capture (not written to rows)
                    "_src": [list(span) for pair in doc.src_spans for span in pair],
                    "_tgt": [list(span) for span in tgt],
                    "_focus": [sum(len(p) for p in doc.src_spans[: doc.focus]), len(doc.src_spans[doc.focus])],
                    "sure": sorted(map(list, gold.sure)), "possible": sorted(map(list, gold.possible))}
            out.append(Sample(id=f"alignment/{layout}/L{length}/d{depth:g}/s{i}", input_ids=doc.ids,
                              references=doc.pairs[doc.focus].target, label_positions=positions,
                              labels=[doc.ids[p + 1] for p in positions], meta=meta))
        return out

    def capture_rows(self, sample: Sample) -> list[int]:
        """The position predicting each focus target word's first token (one row per target word)."""
        return [a - 1 for a, _ in sample.meta["_tgt"]]

    def read_capture(self, sample: Sample, weights) -> dict[str, Any]:
        """AER counts and predicted links per layer x head and for their mean, from weights (L, H, R, S)."""
        import torch

        src = sample.meta["_src"]
        start, count = sample.meta["_focus"]
        sure = {tuple(x) for x in sample.meta["sure"]}
        possible = {tuple(x) for x in sample.meta["possible"]}
        # summed weight of every source word of the document: (L, H, R, W)
        per_word = torch.stack([weights[..., a:b].sum(-1) for a, b in src], dim=-1)
        heads = {f"L{layer}H{head}": per_word[layer, head] for layer in range(per_word.shape[0])
                 for head in range(per_word.shape[1])}
        heads["mean"] = per_word.mean(dim=(0, 1))
        out_counts, out_links, out_weights = {}, {}, {}
        for key, w in heads.items():  # w: (R, W)
            best = w.argmax(-1).tolist()
            links = [(k - start if start <= k < start + count else -1 - k, j) for j, k in enumerate(best)]
            out_counts[key] = metrics.alignment_counts(set(links), sure, possible)
            out_links[key] = [[max(i, -1), j] for i, j in links]
            # weights on the focus source words, per target word (for the attention picture), 3 decimals
            out_weights[key] = [[round(float(x), 3) for x in row] for row in w[:, start:start + count].tolist()]
        return {"aer_counts": out_counts, "links": out_links, "focus_weights": out_weights}

    @classmethod
    def report(cls, df, out):
        from lceval.tasks.alignment.report import build

        return build(df, out)

    def training_example(self, rng: np.random.Generator, length: int, tokenizer) -> TrainingExample:
        """A document at the training length (either layout); every target token is labelled (translation)."""
        layout = ("concatenated", "interleaved")[int(rng.integers(2))]
        doc = build_document(rng, tokenizer, length, float(rng.random()), layout, self.pairs)
        positions = [t - 1 for pair in doc.tgt_spans for a, b in pair for t in range(a, b)]
        return TrainingExample(ids=doc.ids, label_positions=positions, labels=[doc.ids[p + 1] for p in positions])
