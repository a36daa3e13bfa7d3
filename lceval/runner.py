"""The runner: pairings x tasks x cells x samples, streamed to the results store.

Samples are generated once per (task, tokenizer) and shared by every pairing.
Samples of equal length are batched. A batch that fails (out of memory,
non-finite logits, an error in a plugin) is recorded with its status and the
run goes on.
"""

from __future__ import annotations

import hashlib
import json
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lceval import registry
from lceval.attention import Attention
from lceval.config import Pairing, Resolved
from lceval.cores import core_count
from lceval.dataset import cached_samples
from lceval.errors import ConfigError, UserError
from lceval.models.adapters import ModelAdapter
from lceval.scoring import score_batch, uses_teacher_forcing
from lceval.store import ResultsStore, package_versions, write_atomic
from lceval.task import Sample

OK, NONFINITE, OOM, ERROR = "ok", "nonfinite", "oom", "error"
UNSUPPORTED_LENGTH, SKIPPED_MEMORY = "unsupported_length", "skipped_memory"
FAILED = {NONFINITE, OOM, ERROR}


@dataclass
class RunSummary:
    run_dir: Path
    written: int = 0
    skipped_done: int = 0
    total: int = 0
    status_counts: dict[str, int] = field(default_factory=dict)
    report: Path | None = None

    @property
    def failed(self) -> int:
        return sum(n for s, n in self.status_counts.items() if s in FAILED)


@dataclass
class Unit:
    """One batch of work: samples of one prompt length for one pairing and task."""

    pairing: Pairing
    task: str
    batch: list[Sample]
    seq: int  # the longest sequence the answer can need
    size: int  # the batch size the memory budget allows (0: skipped_memory)


def identity(resolved: Resolved, limit: int | None, models: dict[str, dict]) -> dict:
    """Everything that decides the rows: the config without settings that change no result
    (report, run.name, run.batch_size, run.threads, where it runs: run.executor and run.ray), the typed task
    configs (so a default or a data file's contents count), --limit, task versions, model contents, the lceval
    version."""
    config = resolved.config.model_dump(mode="json", exclude={"report"})
    config["run"] = {k: v for k, v in config["run"].items()
                     if k not in ("name", "batch_size", "threads", "executor", "ray")}
    return {"config": config, "limit": limit,
            # typed, with defaults, resolved paths and data-file hashes (the raw config has none of these)
            "task_configs": {name: t.model_dump(mode="json") for name, t in resolved.tasks.items()},
            "task_versions": {name: registry.tasks.get(name).version for name in resolved.tasks},
            "models": {name: m.get("sha256") for name, m in models.items()},
            "lceval": package_versions().get("lceval")}


def run_id(ident: dict) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def use_threads(setting: int | str = "auto") -> int:
    """Set torch's intra-op threads to ``core_count(setting)`` and return it."""
    n = core_count(setting)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def pick_device(name: str, where: str = "run.device") -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(where, "cuda was asked for but no CUDA device is visible; use auto or cpu")
    return name


class Runner:
    def __init__(self, resolved: Resolved, *, limit: int | None = None, progress: bool = True,
                 retry_failed: bool = False):
        self.r = resolved
        self.limit = limit
        self.progress = progress
        self.retry_failed = retry_failed
        self.threads = use_threads(resolved.config.run.threads)
        self.device = pick_device(resolved.config.run.device)
        if resolved.config.run.executor == "ray":
            from lceval.executors.ray import check_available

            check_available()
        self._devices = {name: self.device if spec.device is None else pick_device(spec.device, f"models.{name}.device")
                         for name, spec in resolved.config.models.items()}
        self._adapters: dict[str, ModelAdapter] = {}
        self._attentions: dict[str, Attention] = {}  # pairing label -> its attention, built once
        self._active: dict[str, tuple] = {}  # model name -> (pairing label, the model holding its attention)
        self._redo: set = set()
        self.run_id: str | None = None
        self._samples: dict[tuple[str, str], list[Sample]] = {}
        self._tasks = {name: registry.tasks.get(name)(cfg, seed=resolved.config.run.seed)
                       for name, cfg in resolved.tasks.items()}
        for name, task in self._tasks.items():
            task.name = name  # a preset registered under another name reports as that name

    # -- shared pieces ------------------------------------------------------------------
    def adapter(self, name: str) -> ModelAdapter:
        if name not in self._adapters:
            spec = self.r.config.models[name]
            adapter = registry.models.get(spec.type)(spec, device=self._devices[name], progress=self.progress)
            try:
                adapter.prepare()
            except ConfigError as exc:  # a key under the model's spec: named from the config's root
                raise ConfigError(f"models.{name}.{exc.path}" if exc.path else f"models.{name}", exc.message) from None
            except UserError as exc:
                if str(exc).startswith("models."):
                    raise
                raise ConfigError(f"models.{name}", str(exc)) from None
            self._adapters[name] = adapter
        return self._adapters[name]

    def samples(self, task_name: str, adapter: ModelAdapter) -> list[Sample]:
        """A task's samples for a tokenizer: generated once, cached on disk, shared by every pairing."""
        key = (task_name, adapter.tokenizer.fingerprint())
        if key not in self._samples:
            self._samples[key], _ = cached_samples(self._tasks[task_name], adapter.tokenizer, self.limit)
        return self._samples[key]

    def grid_size(self) -> int:
        per_task = {n: len(t.cells()) * min(self.limit or t.samples_per_cell(), t.samples_per_cell())
                    for n, t in self._tasks.items()}
        return sum(n for p in self.r.pairings for name, n in per_task.items() if p.runs(name))

    def estimate_tokens(self) -> int:
        """Prompt tokens to process, from the grid's context lengths (no tokenizer needed)."""
        per_task = {}
        for name, t in self._tasks.items():
            n = min(self.limit or t.samples_per_cell(), t.samples_per_cell())
            per_task[name] = sum(c.get("context_length") or 0 for c in t.cells()) * n
        return sum(n for p in self.r.pairings for name, n in per_task.items() if p.runs(name))

    def preflight(self) -> None:
        """Refuse now what the run would refuse later: prompts too short for a task's needles at its
        shortest length, training lengths too short for a recipe's tasks. Cheap: one sample each."""
        import numpy as np

        from lceval.models.checkpoint import TOKENIZER
        from lceval.tokenizer import TextTokenizer
        from lceval.train.trainer import build_tasks, mixture_tokenizer

        used = {p.model for p in self.r.pairings}  # a model no pairing uses never meets the tasks
        for name, spec in self.r.config.models.items():
            if spec.type != "reference" or name not in used:
                continue
            if spec.checkpoint is not None:
                tok = TextTokenizer.load(spec.checkpoint / TOKENIZER)
            else:
                recipe_tasks = build_tasks(spec.train, seed=0)
                tok = mixture_tokenizer(recipe_tasks)
                for t, task in recipe_tasks.items():
                    try:
                        task.training_example(np.random.default_rng(0), spec.train.train_length, tok)
                    except UserError as exc:
                        raise ConfigError(f"models.{name}.train.train_length", f"too short for task {t}: {exc}") from None
            runs = {t for p in self.r.pairings if p.model == name for t in self._tasks if p.runs(t)}
            for task in (task for t, task in self._tasks.items() if t in runs):
                cells = [c for c in task.cells() if c.get("context_length") is not None]
                if cells:
                    shortest = min(cells, key=lambda c: c["context_length"])
                    task.cell_samples(shortest, tok, 1)

    # -- the run ------------------------------------------------------------------------
    def run(self, out_dir: Path, after=None) -> RunSummary:
        """Run the grid into ``out_dir``; ``after(out_dir)`` (the report) runs while the lock is still held."""
        summary = RunSummary(Path(out_dir))
        with ResultsStore(out_dir) as store:
            models = {name: self.adapter(name).describe()  # train or load every model before the progress bar
                      for name in dict.fromkeys(p.model for p in self.r.pairings)}
            ident = identity(self.r, self.limit, models)
            self.run_id = run_id(ident)
            store.begin({"config": self.r.config.model_dump(mode="json"), "seed": self.r.config.run.seed,
                         "limit": self.limit, "run_id": self.run_id, "identity": ident,
                         "pairings": [p.model_dump(mode="json") for p in self.r.pairings],
                         "tasks": {name: t.describe() for name, t in self._tasks.items()}})
            write_atomic(Path(out_dir) / "models.json", json.dumps(models, indent=2) + "\n")
            statuses = store.status_of()
            self._redo = {k for k, st in statuses.items() if st in FAILED} if self.retry_failed else set()
            summary.skipped_done = len(store.done) - len(self._redo)
            bar = tqdm(total=self.grid_size(), initial=summary.skipped_done, desc="lceval run", unit="sample",
                       disable=not self.progress, dynamic_ncols=True)
            with bar:
                if self.r.config.run.executor == "ray":
                    from lceval.executors.ray import run_on_ray

                    run_on_ray(self, store, bar, summary)
                else:
                    from lceval.executors.local import run_local

                    run_local(self, store, bar, summary)
            summary.status_counts = dict(Counter(row["status"] for row in store.rows))
            summary.total = len(store.rows)
            if after is not None:
                summary.report = after(Path(out_dir))
        return summary

    def plan(self, pairing: Pairing, store: ResultsStore) -> list[Unit]:
        """The work units of one pairing still to do: batches of one prompt length (teacher-forced batches share
        an answer length), within the memory budget."""
        adapter = self.adapter(pairing.model)
        attention = pairing.attention.build()
        mode = self.r.config.run.answer
        units = []
        for task_name, task in self._tasks.items():
            if not pairing.runs(task_name):
                continue
            stop_ids = task.stop_ids(adapter.tokenizer)
            pending = [s for s in self.samples(task_name, adapter)
                       if (key := (pairing.label, task_name, s.id)) not in store.done or key in self._redo]
            groups: dict[tuple[int, bool, int], list[Sample]] = defaultdict(list)
            for s in pending:
                tf = uses_teacher_forcing(task, s, stop_ids, mode)
                groups[(len(s.input_ids), tf, len(s.answer_ids) + 1 if tf else task.max_new_tokens)].append(s)
            for (length, _, new), group in sorted(groups.items()):  # new: tokens the answer may need
                size = self._batch_size(adapter, attention, length + new)
                for i in range(0, len(group), max(size, 1)):
                    units.append(Unit(pairing, task_name, group[i : i + max(size, 1)], length + new, size))
        return units

    def score_unit(self, unit: Unit) -> list[dict]:
        """Rows of one unit (the same code on this machine and on a Ray worker)."""
        adapter = self.adapter(unit.pairing.model)
        label = unit.pairing.label
        if label not in self._attentions:
            self._attentions[label] = unit.pairing.attention.build()
        attention = self._attentions[label]
        active = self._active.get(unit.pairing.model)
        if active is None or active[0] != label:  # the model holds another pairing's attention
            active = self._active[unit.pairing.model] = (label, adapter.with_attention(attention))
        model = active[1]
        return self._score(unit.pairing, self._tasks[unit.task], adapter, attention, model, unit.batch, unit.seq,
                           unit.size)

    def _batch_size(self, adapter: ModelAdapter, attention, seq: int) -> int:
        """Samples per batch within the memory budget; 0 when even one does not fit."""
        size = self.r.config.run.batch_size
        budget = self.r.config.run.memory_budget_mb * 2**20
        per_sample = attention.score_bytes(1, adapter.n_heads, seq, seq)
        if per_sample == 0:
            return size
        return min(size, budget // per_sample)

    def _score(self, pairing, task, adapter, attention, model, batch, seq, size) -> list[dict]:
        """Score one batch; ``seq`` is the longest sequence the answer can need."""
        length = len(batch[0].input_ids)
        status, message, scored = OK, None, None
        if adapter.max_length is not None and seq - 1 > adapter.max_length:
            status = UNSUPPORTED_LENGTH
            message = f"{adapter.position} positions cover {adapter.max_length} tokens; input needs {seq - 1}"
        elif size == 0:
            status = SKIPPED_MEMORY
            need = attention.score_bytes(1, adapter.n_heads, seq, seq) / 2**20
            message = (f"{attention.name} would need {need:,.0f} MiB of scores > memory_budget_mb "
                       f"{self.r.config.run.memory_budget_mb}; use attention 'flash' (exact, O(n) memory)")
        else:
            try:
                with torch.no_grad():
                    scored = score_batch(model, task, batch, adapter.tokenizer, device=adapter.device,
                                         mode=self.r.config.run.answer)
            except (torch.OutOfMemoryError, MemoryError) as exc:
                status, message = OOM, f"out of memory: {str(exc).splitlines()[0][:200]}"
            except RuntimeError as exc:
                text = str(exc)
                is_oom = "out of memory" in text or "can't allocate memory" in text
                status = OOM if is_oom else ERROR
                message = text.splitlines()[0][:300]
            except Exception as exc:  # a plugin's bug must not stop the grid
                status = ERROR
                message = f"{type(exc).__name__}: {exc}"[:300] + " | " + traceback.format_exc(limit=1).splitlines()[-1]
        rows = []
        for j, sample in enumerate(batch):
            sc = scored[j] if scored is not None else None
            row_status, row_message = status, message
            if sc is not None and not sc.answer.finite:  # judged per sample: its batch-mates keep their result
                row_status, row_message = NONFINITE, "non-finite logits"
            ok = sc is not None and row_status == OK
            rows.append({
                "run_id": self.run_id,
                "task": task.name,
                "sample_id": sample.id,
                "pairing": pairing.label,
                "model": pairing.model,
                "attention": attention.name,
                "attention_params": attention.params.model_dump(),
                "position": adapter.position,
                "context_length": length,
                # keys starting with "_" are the task's working data (spans, gold links), not written to rows
                "meta": {**{k: v for k, v in sample.meta.items() if not k.startswith("_")},
                         **(sc.meta if sc is not None else {})},
                "metric": task.metric,
                "references": sample.references or [adapter.tokenizer.decode(sample.answer_ids).strip()],
                "prediction": sc.prediction if sc is not None else None,
                "score": sc.score if ok else 0.0,
                "correct": bool(ok and sc.score >= 1.0),
                "answer_mode": sc.mode if sc is not None else None,
                "answer_logprob": sc.answer.logprob if sc is not None else None,
                "stop_reason": sc.answer.stop_reason if sc is not None else None,
                "prefill_tokens": length if sc is not None else None,  # prompt tokens computed (no shared prefix)
                "impl": attention.last_impl if sc is not None else None,
                "status": row_status,
                "message": row_message,
            })
        return rows
