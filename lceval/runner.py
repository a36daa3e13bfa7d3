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
from lceval.diagnosis import diagnose, out_of_reach
from lceval.errors import ConfigError, UserError
from lceval.generate import PrefixStore
from lceval.models.adapters import ModelAdapter
from lceval.rows import FAILED, Row, Status
from lceval.scoring import score_batch, uses_teacher_forcing
from lceval.store import ResultsStore, package_versions, write_atomic
from lceval.task import Sample, Task


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
    teacher_forced: bool = False  # decided once, when the unit is planned


class Scorer:
    """``score_unit`` as a callable an executor can ship to another process: it carries the resolved config
    and builds its own Runner there (models loaded once per process); here it uses the runner it came from."""

    def __init__(self, runner: Runner):
        self.resolved, self.limit = runner.resolved, runner.limit
        self._runner: Runner | None = runner

    def prepare(self) -> None:
        """Build this process's Runner now (it applies ``run.threads``; a worker may set its own after)."""
        if self._runner is None:
            self._runner = Runner(self.resolved, limit=self.limit, progress=False)

    def __call__(self, unit: Unit) -> list[Row]:
        self.prepare()
        return self._runner.score_unit(unit)

    def __getstate__(self):
        return {"resolved": self.resolved, "limit": self.limit, "_runner": None}


def identity(resolved: Resolved, limit: int | None, models: dict[str, dict], ablations: dict | None = None) -> dict:
    """Everything that decides the rows: the config without settings that change no result
    (report, run.name, run.batch_size, run.threads, where it runs: run.executor and run.ray), the typed task
    configs (so a default or a data file's contents count), --limit, task versions, model contents, the lceval
    version."""
    config = resolved.config.model_dump(mode="json", exclude={"report"})
    config["run"] = {k: v for k, v in config["run"].items()
                     if k not in ("name", "batch_size", "threads", "executor", "ray", "prefix_reuse")}
    return {"config": config, "limit": limit,
            # typed, with defaults, resolved paths and data-file hashes (the raw config has none of these)
            "task_configs": {name: t.model_dump(mode="json") for name, t in resolved.tasks.items()},
            "task_versions": {name: registry.tasks.get(name).version for name in resolved.tasks},
            "models": {name: m.get("sha256") for name, m in models.items()},
            "lceval": package_versions().get("lceval"),
            **({"ablations": {k: [list(h) for h in v] for k, v in ablations.items()}} if ablations else {})}


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
    """Plans a resolved config's grid into units, scores units, and runs the grid into a results store."""

    def __init__(self, resolved: Resolved, *, limit: int | None = None, progress: bool = True,
                 retry_failed: bool = False):
        self.resolved = resolved
        self.config = resolved.config
        self.limit = limit
        self.progress = progress
        self.retry_failed = retry_failed
        self.threads = use_threads(resolved.config.run.threads)
        self.device = pick_device(resolved.config.run.device)
        self._devices = {name: self.device if spec.device is None else pick_device(spec.device, f"models.{name}.device")
                         for name, spec in resolved.config.models.items()}
        self._adapters: dict[str, ModelAdapter] = {}
        self._attentions: dict[str, Attention] = {}  # pairing label -> its attention, built once
        self._attached: dict[str, tuple[str, object]] = {}  # model name -> (pairing label, model with its attention)
        self._redo: set = set()
        self._ablations: dict[str, list[tuple[int, int]]] = {}  # pairing label -> heads it zeroes
        self._samples: dict[tuple[str, str], list[Sample]] = {}
        self._prefixes: tuple[str, PrefixStore] | None = None  # the pairing whose prompt prefix is kept, and it
        self.tasks = {name: registry.tasks.get(name)(cfg, seed=resolved.config.run.seed)
                      for name, cfg in resolved.tasks.items()}
        for name, task in self.tasks.items():
            task.name = name  # a preset registered under another name reports as that name

    # -- shared pieces ------------------------------------------------------------------
    def adapter(self, name: str) -> ModelAdapter:
        if name not in self._adapters:
            spec = self.config.models[name]
            if getattr(spec, "train", None) is not None:  # a recipe becomes its (cached) checkpoint before any adapter sees it
                from lceval.train import ensure_trained

                path = ensure_trained(spec.train, progress=self.progress, device=self._devices[name])
                spec = spec.model_copy(update={"checkpoint": path, "train": None})
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

    def ablation(self, pairing: Pairing) -> list[tuple[int, int]]:
        """The (layer, head) pairs ``pairing`` zeroes (none without ``ablate``), resolved once per pairing."""
        if pairing.ablate is None:
            return []
        if pairing.label not in self._ablations:
            from lceval.ablation import resolve_heads

            adapter = self.adapter(pairing.model)
            where = f"pairings ({pairing.label}).ablate"
            if adapter.n_layers is None:
                raise ConfigError(where, f"model {pairing.model} does not say its layers and heads; head ablation "
                                  "needs a reference or hf model, or a module that sets n_layers and set_ablation")
            self._ablations[pairing.label] = resolve_heads(pairing.ablate, pairing.model, adapter.n_layers,
                                                           adapter.n_heads, where)
        return self._ablations[pairing.label]

    def samples(self, task_name: str, adapter: ModelAdapter) -> list[Sample]:
        """A task's samples for a tokenizer: generated once, cached on disk, shared by every pairing."""
        key = (task_name, adapter.tokenizer.fingerprint())
        if key not in self._samples:
            self._samples[key], _ = cached_samples(self.tasks[task_name], adapter.tokenizer, self.limit)
        return self._samples[key]

    def _cells(self, pairing: Pairing):
        """(task, cell, samples per cell) of every grid cell a pairing runs."""
        for name, t in self.tasks.items():
            if pairing.runs(name):
                n = pairing.per_cell(min(self.limit or t.samples_per_cell(), t.samples_per_cell()))
                yield from ((name, c, n) for c in t.cells() if pairing.runs_cell(c))

    def grid_size(self) -> int:
        return sum(n for p in self.resolved.pairings for _, _, n in self._cells(p))

    def estimate_tokens(self) -> int:
        """Prompt tokens to process, from the grid's context lengths (no tokenizer needed)."""
        return sum((c.get("context_length") or 0) * n for p in self.resolved.pairings for _, c, n in self._cells(p))

    def preflight(self) -> None:
        """Refuse now what the run would refuse later: prompts too short for a task's needles at its
        shortest length, training lengths too short for a recipe's tasks. Cheap: one sample each, with the
        tokenizer each model type can give before loading (``ModelAdapter.preflight_tokenizer``)."""
        used = {p.model for p in self.resolved.pairings}  # a model no pairing uses never meets the tasks
        for name, spec in self.config.models.items():
            tok = registry.models.get(spec.type).preflight_tokenizer(spec, f"models.{name}") if name in used else None
            if tok is None:
                continue
            runs = {t for p in self.resolved.pairings if p.model == name for t in self.tasks if p.runs(t)}
            for task in (task for t, task in self.tasks.items() if t in runs):
                cells = [c for c in task.cells() if c.get("context_length") is not None]
                if cells:
                    shortest = min(cells, key=lambda c: c["context_length"])
                    task.cell_samples(shortest, tok, 1)

    # -- the run ------------------------------------------------------------------------
    def run(self, out_dir: Path, executor=None, after=None) -> RunSummary:
        """Run the grid into ``out_dir`` with ``executor`` (default: this process, ``executors.local``);
        ``after(out_dir)`` (the report) runs while the lock is still held."""
        from lceval.executors import Progress
        from lceval.executors.local import run_local

        summary = RunSummary(Path(out_dir))
        with ResultsStore(out_dir) as store:
            models = {name: self.adapter(name).describe()  # train or load every model before the progress bar
                      for name in dict.fromkeys(p.model for p in self.resolved.pairings)}
            ablations = {p.label: self.ablation(p) for p in self.resolved.pairings if p.ablate is not None}
            ident = identity(self.resolved, self.limit, models, ablations)
            store.begin({"config": self.config.model_dump(mode="json"), "seed": self.config.run.seed,
                         "limit": self.limit, "run_id": run_id(ident), "identity": ident,
                         "pairings": [p.model_dump(mode="json") for p in self.resolved.pairings],
                         "tasks": {name: t.describe() for name, t in self.tasks.items()}})
            write_atomic(Path(out_dir) / "models.json", json.dumps(models, indent=2) + "\n")
            statuses = store.status_of()
            self._redo = {k for k, st in statuses.items() if st in FAILED} if self.retry_failed else set()
            summary.skipped_done = len(store.done) - len(self._redo)
            bar = tqdm(total=self.grid_size(), initial=summary.skipped_done, desc="lceval run", unit="sample",
                       disable=not self.progress, dynamic_ncols=True)
            with bar:
                units = [u for p in self.resolved.pairings for u in self.plan(p, store)]
                (executor or run_local)(units, Scorer(self), Progress(store, bar, summary).done)
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
        mode = self.config.run.answer
        units = []
        for task_name, task in self.tasks.items():
            if not pairing.runs(task_name):
                continue
            stop_ids = task.stop_ids(adapter.tokenizer)
            pending = [s for s in self.samples(task_name, adapter)
                       if ((key := (pairing.label, task_name, s.id)) not in store.done or key in self._redo)
                       and pairing.runs_cell({"context_length": len(s.input_ids), "depth": s.meta.get("depth")})
                       and pairing.runs_sample(task_name, s.meta)]
            groups: dict[tuple[int, bool, int], list[Sample]] = defaultdict(list)
            for s in pending:
                forced = uses_teacher_forcing(task, s, stop_ids, mode)
                groups[(len(s.input_ids), forced, len(s.answer_ids) + 1 if forced else task.max_new_tokens)].append(s)
            for (length, forced, new), group in sorted(groups.items()):  # new: tokens the answer may need
                if self._prefix_mode(task):  # neighbours in text order share the longest prefixes
                    group = sorted(group, key=lambda s: s.input_ids)
                size = self._batch_size(adapter, attention, length + new)
                for i in range(0, len(group), max(size, 1)):
                    units.append(Unit(pairing, task_name, group[i : i + max(size, 1)], length + new, size, forced))
        return units

    def score_unit(self, unit: Unit) -> list[dict]:
        """Rows of one unit (the same code on this machine and on a Ray worker)."""
        adapter = self.adapter(unit.pairing.model)
        label = unit.pairing.label
        if label not in self._attentions:
            self._attentions[label] = unit.pairing.attention.build()
        attention = self._attentions[label]
        attached = self._attached.get(unit.pairing.model)
        if attached is None or attached[0] != label:  # the model holds another pairing's attention
            model = adapter.with_attention(attention)
            heads = self.ablation(unit.pairing)
            if heads or hasattr(model, "set_ablation"):
                model.set_ablation(heads)
            attached = self._attached[unit.pairing.model] = (label, model)
        return self._score(unit, self.tasks[unit.task], adapter, attention, attached[1])

    def _batch_size(self, adapter: ModelAdapter, attention, seq: int) -> int:
        """Samples per batch within the memory budget; 0 when even one does not fit."""
        size = self.config.run.batch_size
        budget = self.config.run.memory_budget_mb * 2**20
        per_sample = attention.score_bytes(1, adapter.n_heads, seq, seq)
        if per_sample == 0:
            return size
        return min(size, budget // per_sample)

    def _score(self, unit: Unit, task: Task, adapter: ModelAdapter, attention: Attention, model) -> list[Row]:
        """Rows of one unit's batch: scored, or each marked with why it was not."""
        status, message = self._refusal(unit, adapter, attention)
        scored = None
        if status is Status.OK:
            reuse = self._reuses_prefix(task, attention, model)
            try:
                with torch.no_grad():
                    scored = score_batch(model, task, unit.batch, adapter.tokenizer, device=adapter.device,
                                         mode=self.config.run.answer, forced=unit.teacher_forced,
                                         capture=self.config.run.capture, reuse_prefix=reuse,
                                         store=self._prefix_store(unit.pairing.label) if reuse else None)
            except Exception as exc:  # noqa: BLE001  (a plugin's bug must not stop the grid)
                status, message = failure(exc)
        rows = []
        for j, sample in enumerate(unit.batch):
            result = scored[j] if scored is not None else None
            row_status, row_message = status, message
            if result is not None and not result.answer.finite:  # judged per sample: batch-mates keep theirs
                row_status, row_message = Status.NONFINITE, "non-finite logits"
            rows.append(make_row(unit.pairing, task, adapter, attention, sample, result, row_status, row_message,
                                 self.config.run.attended_mass))
        return rows

    def _prefix_mode(self, task: Task) -> bool:
        """Whether prompts of this task may share a prefix worth computing once (``run.prefix_reuse``)."""
        mode = self.config.run.prefix_reuse
        return mode == "on" or (mode == "auto" and task.shares_prefix())

    def _prefix_store(self, label: str) -> PrefixStore:
        """The prompt prefix kept between this pairing's batches (one pairing's at a time; its keys are that
        pairing's), at most ``run.memory_budget_mb`` of them."""
        if self._prefixes is None or self._prefixes[0] != label:
            self._prefixes = (label, PrefixStore(self.config.run.memory_budget_mb * 2**20))
        return self._prefixes[1]

    def _reuses_prefix(self, task: Task, attention: Attention, model) -> bool:
        """Prefix reuse for this batch: asked for, the model's chunked prefill equals its whole prefill (not so for
        dynamic NTK RoPE, which rescales by the length of each call), and a capture can still read the attention
        (a recurrent variant keeps no keys to read back over the prefix)."""
        return (self._prefix_mode(task) and getattr(model, "chunked_prefill_exact", True)
                and not (self.config.run.capture and getattr(attention, "recurrent", False)))

    def _refusal(self, unit: Unit, adapter: ModelAdapter, attention: Attention) -> tuple[Status, str | None]:
        """Why a unit is not run at all (positions too short, scores over the memory budget), else OK."""
        if adapter.max_length is not None and unit.seq - 1 > adapter.max_length:
            return Status.UNSUPPORTED_LENGTH, (f"{adapter.position} positions cover {adapter.max_length} tokens; "
                                               f"input needs {unit.seq - 1}")
        if unit.size == 0:
            need = attention.score_bytes(1, adapter.n_heads, unit.seq, unit.seq) / 2**20
            return Status.SKIPPED_MEMORY, (f"{attention.name} would need {need:,.0f} MiB of scores > "
                                           f"memory_budget_mb {self.config.run.memory_budget_mb}; use attention "
                                           "'flash' (exact, O(n) memory)")
        return Status.OK, None


def failure(exc: BaseException) -> tuple[Status, str]:
    """A scoring exception as a row status and message: out of memory, or an error with its last frame."""
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return Status.OOM, f"out of memory: {str(exc).splitlines()[0][:200]}"
    if isinstance(exc, RuntimeError):
        text = str(exc)
        is_oom = "out of memory" in text or "can't allocate memory" in text
        return (Status.OOM if is_oom else Status.ERROR), text.splitlines()[0][:300]
    return Status.ERROR, (f"{type(exc).__name__}: {exc}"[:300] + " | "
                          + traceback.format_exc(limit=1).splitlines()[-1])


def make_row(pairing: Pairing, task: Task, adapter: ModelAdapter, attention: Attention, sample: Sample,
             result, status: Status, message: str | None, attended_mass: float = 0.5) -> Row:
    """One sample's row; ``result`` is its ``Scored`` (None when it did not run)."""
    ran = result is not None
    ok = ran and status is Status.OK
    diagnosis = None
    if ok and "_evidence" in sample.meta:
        needle = sample.meta["_evidence"].get("needle", [])
        diagnosis = diagnose(result.score >= 1.0, result.meta.get("attention"),
                             out_of_reach(attention, len(sample.input_ids), needle), attended_mass)
    return Row(
        task=task.name, sample_id=sample.id, pairing=pairing.label, model=pairing.model,
        attention=attention.name, attention_params=attention.params.model_dump(), position=adapter.position,
        context_length=len(sample.input_ids),
        # keys starting with "_" are the task's working data (spans, gold links), not written to rows
        meta={**{k: v for k, v in sample.meta.items() if not k.startswith("_")}, **(result.meta if ran else {})},
        metric=task.metric,
        references=sample.references or [adapter.tokenizer.decode(sample.answer_ids).strip()],
        prediction=result.prediction if ran else None,
        score=result.score if ok else 0.0,
        correct=bool(ok and result.score >= 1.0),
        diagnosis=diagnosis,
        answer_mode=result.mode if ran else None,
        answer_logprob=result.answer.logprob if ran else None,
        stop_reason=result.answer.stop_reason if ran else None,
        # prompt tokens computed: fewer where a shared prefix was computed once (the batch's first row carries it)
        prefill_tokens=(result.answer.prefill_tokens or len(sample.input_ids)) if ran else None,
        impl=attention.last_impl if ran else None,
        status=status, message=message)
