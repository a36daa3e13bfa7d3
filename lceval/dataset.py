"""Generated samples, cached once with ``datasets`` (Arrow on disk).

A task's samples are a pure function of (task name, task version, task config,
seed, tokenizer fingerprint, per-cell limit); that tuple's hash names a cache
entry under ``$LCEVAL_CACHE/datasets``. The first run generates and saves the
entry (written to a temporary folder and renamed, so a killed run never leaves
half an entry); later runs, and every pairing that shares the tokenizer, load
it. ``LCEVAL_DATASET_CACHE=off`` disables the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from lceval.task import Sample, Task
from lceval.tokenizer import PIECE_METHOD, TextTokenizer

FORMAT = "lceval-samples/3"  # 3: samples carry their evidence spans (meta._evidence)


def cache_root() -> Path:
    from lceval.paths import cache_dir

    return cache_dir() / "datasets"


def dataset_key(task: Task, tokenizer: TextTokenizer, limit: int | None) -> str:
    payload = {"format": FORMAT, "task": task.name, "version": task.version, "class": type(task).__qualname__,
               "config": task.config.model_dump(mode="json"), "seed": task.seed,
               "tokenizer": tokenizer.fingerprint(), "pieces": PIECE_METHOD, "limit": limit}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


def to_columns(samples: list[Sample]) -> dict[str, list]:
    return {
        "id": [s.id for s in samples],
        "input_ids": [s.input_ids for s in samples],
        "answer_ids": [s.answer_ids or [] for s in samples],
        "has_answer_ids": [s.answer_ids is not None for s in samples],
        "references": [s.references for s in samples],
        "meta": [json.dumps(s.meta) for s in samples],
        "label_positions": [s.label_positions or [] for s in samples],
        "labels": [s.labels for s in samples],
    }


def from_columns(cols: dict[str, list]) -> list[Sample]:
    return [Sample(id=i, input_ids=ids, answer_ids=a if has else None, references=refs, meta=json.loads(m),
                   label_positions=lp if lab is not None else None, labels=lab)
            for i, ids, a, has, refs, m, lp, lab in zip(
                cols["id"], cols["input_ids"], cols["answer_ids"], cols["has_answer_ids"], cols["references"],
                cols["meta"], cols["label_positions"], cols["labels"], strict=True)]


def cached_samples(task: Task, tokenizer: TextTokenizer, limit: int | None = None) -> tuple[list[Sample], bool]:
    """The task's samples, from the cache when present; returns (samples, loaded_from_cache)."""
    if os.environ.get("LCEVAL_DATASET_CACHE", "on") == "off":
        return task.samples(tokenizer, limit=limit), False
    import datasets

    datasets.disable_progress_bars()
    path = cache_root() / f"{task.name}-{dataset_key(task, tokenizer, limit)}"
    if (path / "dataset_info.json").exists():
        try:
            ds = datasets.load_from_disk(str(path))
            return from_columns(ds.with_format(None)[:]), True
        except Exception:  # a damaged entry: regenerate it
            shutil.rmtree(path, ignore_errors=True)
    samples = task.samples(tokenizer, limit=limit)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=".tmp-"))
    try:
        features = datasets.Features({
            "id": datasets.Value("string"), "input_ids": datasets.Sequence(datasets.Value("int32")),
            "answer_ids": datasets.Sequence(datasets.Value("int32")), "has_answer_ids": datasets.Value("bool"),
            "references": datasets.Sequence(datasets.Value("string")), "meta": datasets.Value("string"),
            "label_positions": datasets.Sequence(datasets.Value("int32")),
            "labels": datasets.Sequence(datasets.Value("int32"))})
        datasets.Dataset.from_dict(to_columns(samples), features=features).save_to_disk(str(tmp))
        if path.exists():  # another process finished first: keep its entry
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.rename(path)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # caching is an optimisation: a full disk must not stop the run
    return samples, False
