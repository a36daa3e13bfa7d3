"""Per-sample metrics, as pure functions of the prediction and the references.

Every metric returns a score in [0, 1] for one sample; a report averages them
over samples and shows percent (x100), as RULER does.

* ``exact_match``: the model produced exactly the reference tokens and then
  stopped. Compared as token ids (what the model would naturally produce), so
  a longer answer such as ``1234`` for ``123`` is wrong.
* ``string_match_all`` (RULER): the fraction of references found as
  case-insensitive substrings of the prediction. Order-free.
* ``string_match_part`` (RULER): 1 if any reference is found, else 0.
* ``label_accuracy``: the fraction of labelled positions where the model's
  argmax is the label, in one teacher-forced pass (multi-query associative
  recall is scored this way, every query of a sample counted).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

METRICS: dict[str, Callable[..., float]] = {}


def metric(fn):
    METRICS[fn.__name__] = fn
    return fn


@metric
def string_match_all(prediction: str, references: Sequence[str]) -> float:
    """Fraction of references that occur (case-insensitively) in the prediction."""
    if not references:
        raise ValueError("string_match_all needs at least one reference")
    text = prediction.lower()
    return sum(r.lower() in text for r in references) / len(references)


@metric
def string_match_part(prediction: str, references: Sequence[str]) -> float:
    """1.0 when any reference occurs (case-insensitively) in the prediction, else 0.0."""
    if not references:
        raise ValueError("string_match_part needs at least one reference")
    text = prediction.lower()
    return float(any(r.lower() in text for r in references))


def exact_match(predicted_ids: Sequence[int], answer_ids: Sequence[int], stopped: bool) -> float:
    """1.0 when the model emitted exactly ``answer_ids`` and then a stop token."""
    return float(stopped and list(predicted_ids) == list(answer_ids))


TEXT_METRICS = tuple(METRICS)  # metrics computed on decoded text
ALL_METRICS = (*TEXT_METRICS, "exact_match", "label_accuracy")


def score_text(name: str, prediction: str, references: Sequence[str]) -> float:
    if name not in METRICS:
        raise ValueError(f"unknown text metric {name!r}; choose one of {', '.join(METRICS)}")
    return METRICS[name](prediction, references)


# --- word alignment (Och & Ney 2003) -------------------------------------------------------
Link = tuple[int, int]  # (source word, target word), zero-based


def alignment_counts(predicted: set[Link], sure: set[Link], possible: set[Link]) -> dict[str, int]:
    """The four counts AER is made of, for one sentence pair. ``possible`` includes ``sure`` (it is
    made to: a sure link is always possible)."""
    possible = set(possible) | set(sure)
    return {"a": len(predicted), "s": len(sure), "a_and_s": len(predicted & set(sure)),
            "a_and_p": len(predicted & possible)}


def aer(counts: dict[str, int]) -> dict[str, float]:
    """AER = 1 - (|A n S| + |A n P|) / (|A| + |S|), precision |A n P| / |A|, recall |A n S| / |S|.

    ``counts`` are summed over every sentence pair of a cell first: AER is a ratio of sums,
    not a mean of per-sentence ratios. No prediction at all gives precision nan, recall 0 and AER 1.
    """
    a, s, a_s, a_p = counts["a"], counts["s"], counts["a_and_s"], counts["a_and_p"]
    nan = float("nan")
    return {"aer": 1.0 - (a_s + a_p) / (a + s) if a + s else nan,
            "precision": a_p / a if a else nan, "recall": a_s / s if s else nan}


def sum_counts(many) -> dict[str, int]:
    out = {"a": 0, "s": 0, "a_and_s": 0, "a_and_p": 0}
    for c in many:
        for key in out:
            out[key] += c[key]
    return out


def label_accuracy(predicted: Sequence[int], labels: Sequence[int]) -> float:
    """Fraction of labelled positions predicted right (predicted and labels aligned, same length)."""
    if not labels:
        raise ValueError("label_accuracy needs at least one label")
    if len(predicted) != len(labels):
        raise ValueError(f"{len(predicted)} predictions for {len(labels)} labels")
    return sum(p == t for p, t in zip(predicted, labels, strict=True)) / len(labels)
