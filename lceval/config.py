"""The config schema: typed pydantic models of a run config, and ``validate``.

Every user error becomes a ``ConfigError`` whose message starts with the key
path (``tasks.niah.depths[2]``) and says what is allowed. Reading YAML,
``--set``, recipe files and the checks that look at files on disk (a model's
weights, a checkpoint's card) live in ``lceval.resolve``; what each model type
knows about its own files lives in its adapter (``lceval.models``).
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic

from lceval.errors import ConfigError
from lceval.task import SafePath


class Strict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")


class AttentionSpec(Strict):
    """An attention variant and its parameters: ``flash`` or ``{name: sliding_window, window: 64}``."""

    name: str
    params: dict[str, Any] = pydantic.Field(default_factory=dict)

    @pydantic.model_validator(mode="before")
    @classmethod
    def _from_short(cls, data):
        if isinstance(data, str):
            return {"name": data}
        if isinstance(data, dict) and "params" not in data and "name" in data:
            return {"name": data["name"], "params": {k: v for k, v in data.items() if k != "name"}}
        return data

    def build(self):
        from lceval.attention import build_attention

        return build_attention(self.name, **self.params)


class TaskMix(Strict):
    """One task of a training mixture: its sampling weight and its config."""

    weight: pydantic.PositiveFloat = 1.0
    config: dict[str, Any] = pydantic.Field(default_factory=dict)

    @pydantic.model_validator(mode="before")
    @classmethod
    def _from_weight(cls, data):
        return {"weight": data} if isinstance(data, int | float) and not isinstance(data, bool) else data


class TrainRecipe(Strict):
    """Everything that determines a trained reference model.

    One task (``task`` + ``task_config``) or a mixture (``tasks: {name: weight}`` or
    ``{name: {weight: 1, config: {...}}}``): each training sequence comes from one task,
    drawn by weight.
    """

    task: str = "niah"
    task_config: dict[str, Any] = pydantic.Field(default_factory=dict)
    tasks: dict[str, TaskMix] | None = pydantic.Field(None, min_length=1)
    position: str = "rotary"
    attention: AttentionSpec = pydantic.Field(default_factory=lambda: AttentionSpec(name="flash"))
    d_model: pydantic.PositiveInt = 64
    n_layers: pydantic.PositiveInt = 2
    n_heads: pydantic.PositiveInt = 2
    n_kv_heads: pydantic.PositiveInt | None = None
    conv_kernel: pydantic.NonNegativeInt = 3
    train_length: pydantic.PositiveInt = 128
    max_length: pydantic.PositiveInt | None = pydantic.Field(
        None, description="rows of a learned position table; defaults to train_length")
    steps: pydantic.PositiveInt = 600
    batch_size: pydantic.PositiveInt = 32
    lr: pydantic.PositiveFloat = 3e-3
    warmup: pydantic.NonNegativeInt = 50
    weight_decay: pydantic.NonNegativeFloat = 0.0
    eval_samples: pydantic.NonNegativeInt = 256
    seed: int = 0

    def mixture(self) -> dict[str, TaskMix]:
        """The tasks this recipe trains on, with weights and configs."""
        return self.tasks if self.tasks is not None else {self.task: TaskMix(config=self.task_config)}


class RopeSpec(Strict):
    """A RoPE override for a rotary Hugging Face model: base ``theta`` and/or a length-extension ``scaling``."""

    theta: float | None = pydantic.Field(None, gt=0, allow_inf_nan=False)
    scaling: Literal["linear", "dynamic", "yarn"] | None = None
    factor: float = pydantic.Field(1.0, ge=1.0, allow_inf_nan=False,
                                   description="how many times the trained length to stretch to")
    original_max_position_embeddings: pydantic.PositiveInt | None = None


HF_ONLY = ("chat_template", "trust_remote_code", "rope")


class ModelBase(Strict):
    """What every model type takes: ``dtype`` and ``device`` (default: ``run.device``)."""

    type: str
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] | None = pydantic.Field(None, description="default: run.device")

    @pydantic.model_validator(mode="before")
    @classmethod
    def _hf_only(cls, data):
        if isinstance(data, dict) and data.get("type", "reference") != "hf" and any(k in data for k in HF_ONLY):
            raise ValueError(f"{', '.join(HF_ONLY[:-1])} and {HF_ONLY[-1]} apply to hf models only")
        return data


class ReferenceSpec(ModelBase):
    """``type: reference``: lceval's transformer, from a ``checkpoint`` directory or a ``train`` recipe."""

    type: Literal["reference"] = "reference"
    checkpoint: SafePath | None = None
    train: TrainRecipe | None = None

    @pydantic.model_validator(mode="after")
    def _one_source(self):
        if (self.checkpoint is None) == (self.train is None):
            raise ValueError("a reference model needs exactly one of 'checkpoint' or 'train'")
        return self


class HFSpec(ModelBase):
    """``type: hf``: a local Hugging Face causal LM directory or GGUF file (``path``; safetensors only), with
    ``chat_template``, ``trust_remote_code`` and a ``rope`` override."""

    type: Literal["hf"]
    path: SafePath = pydantic.Field(description="a directory saved with save_pretrained, or a .gguf file")
    chat_template: bool = False
    trust_remote_code: bool = False
    rope: RopeSpec | None = None


class ModuleSpec(ModelBase):
    """``type: module``: ``factory: package.module:callable`` returning a model that follows
    ``lceval.models.module.LcevalModel`` and a tokenizer (``options`` are its keyword arguments)."""

    type: Literal["module"]
    factory: str
    options: dict[str, Any] = pydantic.Field(default_factory=dict)

    @pydantic.field_validator("factory")
    @classmethod
    def _factory_ref(cls, v):
        import re

        if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", v):
            raise ValueError(f"must be package.module:callable, e.g. mypkg.models:build (got {v!r})")
        return v


class PluginSpec(ModelBase):
    """A model type a plugin registers: its own fields, which its adapter checks (``check_spec``)."""

    model_config = pydantic.ConfigDict(extra="allow")


#: the spec class of each built-in model type (tags start upper-case, so error paths leave them out)
MODEL_SPECS = {"reference": ReferenceSpec, "hf": HFSpec, "module": ModuleSpec}
TAGS = {"reference": "Reference", "hf": "HF", "module": "Module"}


def _model_tag(v) -> str:
    kind = v.get("type", "reference") if isinstance(v, dict) else getattr(v, "type", "reference")
    return TAGS.get(kind, "Plugin") if isinstance(kind, str) else "Plugin"  # PluginSpec then names a bad type


#: a model: one of the spec classes, chosen by ``type`` (a plugin's type gets ``PluginSpec``)
ModelSpec = Annotated[
    Annotated[ReferenceSpec, pydantic.Tag("Reference")] | Annotated[HFSpec, pydantic.Tag("HF")]
    | Annotated[ModuleSpec, pydantic.Tag("Module")] | Annotated[PluginSpec, pydantic.Tag("Plugin")],
    pydantic.Discriminator(_model_tag)]


def model_spec(data: dict) -> ReferenceSpec | HFSpec | ModuleSpec | PluginSpec:
    """Validate one model's mapping into its spec class."""
    return pydantic.TypeAdapter(ModelSpec).validate_python(data)


class AblationSpec(Strict):
    """Attention heads whose output is zeroed at evaluation time (the head's slice of the attention output,
    before the output projection): listed ``heads``, the ``top_retrieval`` K heads of an earlier run's
    ``retrieval_heads.csv`` (``from``), or ``random`` K heads (drawn with ``seed`` from every head, or from the
    heads outside that run's top ``exclude_top``)."""

    model_config = pydantic.ConfigDict(extra="forbid", populate_by_name=True)
    heads: list[tuple[pydantic.NonNegativeInt, pydantic.NonNegativeInt]] | None = None
    top_retrieval: pydantic.PositiveInt | None = None
    random: pydantic.PositiveInt | None = None
    seed: int = 0
    exclude_top: pydantic.PositiveInt | None = None
    from_run: SafePath | None = pydantic.Field(None, alias="from", description="an earlier run directory")

    @pydantic.model_validator(mode="after")
    def _one_kind(self):
        kinds = [k for k in ("heads", "top_retrieval", "random") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of heads, top_retrieval or random")
        if self.top_retrieval is not None and self.from_run is None:
            raise ValueError("top_retrieval needs from: the run directory whose retrieval_heads.csv ranks the heads")
        if self.exclude_top is not None and (self.random is None or self.from_run is None):
            raise ValueError("exclude_top goes with random and from")
        return self

    @property
    def label(self) -> str:
        if self.heads is not None:
            return "ablate(" + ",".join(f"L{layer}H{h}" for layer, h in self.heads) + ")"
        if self.top_retrieval is not None:
            return f"ablate(top{self.top_retrieval})"
        rest = f",not-top{self.exclude_top}" if self.exclude_top else ""
        return f"ablate(random{self.random},s{self.seed}{rest})"


class PairingSpec(Strict):
    """A model with an attention variant. Lists in either field expand to their cross product."""

    model: str | list[str]
    attention: AttentionSpec | list[AttentionSpec] = pydantic.Field(default_factory=lambda: AttentionSpec(name="full"))
    label: str | None = None
    ablate: AblationSpec | None = pydantic.Field(None, description="heads to zero at evaluation time")
    tasks: list[str] | None = pydantic.Field(
        None, min_length=1, description="which of the config's tasks these pairings run (default: every task)")
    lengths: list[pydantic.PositiveInt] | None = pydantic.Field(
        None, min_length=1, description="which of its tasks' context lengths these pairings run (default: all)")
    depths: list[pydantic.confloat(ge=0.0, le=1.0)] | None = pydantic.Field(
        None, min_length=1, description="which of its tasks' needle depths these pairings run (default: all; "
                                        "cells without a depth always run)")
    samples: pydantic.PositiveInt | None = pydantic.Field(
        None, description="at most this many samples per cell of its tasks: the first ones, the same prompts "
                          "other pairings see (default: every sample of the task)")


class RaySpec(Strict):
    """Where and how wide a ``run.executor: ray`` grid runs."""

    address: str = pydantic.Field("local", pattern=r"^(auto|local|ray://\S+|[\w.-]+:\d+)$",
                                  description="local: start a Ray instance here; auto: the cluster `ray start` "
                                              "made; ray://host:10001: a remote cluster's client port")
    num_cpus_per_worker: float = pydantic.Field(1.0, gt=0)
    num_gpus_per_worker: float = pydantic.Field(0.0, ge=0)
    max_workers: pydantic.PositiveInt | None = pydantic.Field(
        None, description="default: as many as the cluster's CPUs (or GPUs) allow")
    max_retries: int = pydantic.Field(3, ge=0, description="times a unit is retried after its worker dies")


class RunSpec(Strict):
    name: str = pydantic.Field("run", pattern=r"^[A-Za-z0-9_.-]+$", max_length=100,
                               description="the run's folder under runs/: letters, digits, '_', '.', '-'")

    @pydantic.field_validator("name")
    @classmethod
    def _plain(cls, v):
        if v in (".", ".."):
            raise ValueError("must name a folder, not '.' or '..'")
        return v

    seed: int = 0
    batch_size: pydantic.PositiveInt = 16
    device: Literal["auto", "cpu", "cuda"] = "auto"
    memory_budget_mb: pydantic.PositiveInt = pydantic.Field(
        4096, description="largest score matrix a quadratic-memory variant may build, and the most a prompt "
                          "prefix kept between batches may hold (prefix_reuse)")
    threads: pydantic.PositiveInt | Literal["auto"] = pydantic.Field(
        "auto", description="torch threads; auto: $OMP_NUM_THREADS if set, else the cores this process may use")
    answer: Literal["auto", "generate", "full"] = pydantic.Field(
        "auto", description="auto: teacher forcing where it equals greedy decoding, else generation that stops "
                            "once the score is decided; generate: always generation; full: generation to a stop "
                            "token or the whole budget (complete predictions)")
    prefix_reuse: Literal["auto", "on", "off"] = pydantic.Field(
        "auto", description="compute a prefix the prompts of a batch share once (chunked prefill from the cached "
                            "prefix; the same rows): auto: for tasks whose prompts share text (a shared "
                            "haystack); on: every generated batch; off: never")
    capture: bool = pydantic.Field(
        True, description="read attention on the evidence while answering (tasks that declare evidence spans): "
                          "each row gets its per-head evidence mass and a diagnosis of a miss")
    attended_mass: float = pydantic.Field(
        0.5, gt=0, le=1, description="a head whose mass on the needle reaches this has attended to it")
    executor: Literal["local", "ray"] = pydantic.Field(
        "local", description="local: this process; ray: a Ray cluster (pip install -e '.[ray]')")
    ray: RaySpec = pydantic.Field(default_factory=lambda: RaySpec())


class ReportSpec(Strict):
    threshold: float = pydantic.Field(85.6, gt=0, le=100, description="percent accuracy for effective length")
    distance_bins: pydantic.PositiveInt = 8


class RunConfig(Strict):
    run: RunSpec = pydantic.Field(default_factory=RunSpec)
    models: dict[str, ModelSpec] = pydantic.Field(min_length=1)
    pairings: list[PairingSpec] = pydantic.Field(min_length=1)
    tasks: dict[str, dict[str, Any]] = pydantic.Field(min_length=1)
    report: ReportSpec = pydantic.Field(default_factory=ReportSpec)


# --- resolved objects ------------------------------------------------------------------
class Pairing(pydantic.BaseModel):
    model: str
    attention: AttentionSpec
    label: str
    tasks: list[str] | None = None  # None: every task of the config
    ablate: AblationSpec | None = None
    lengths: list[int] | None = None  # None: every length of its tasks
    depths: list[float] | None = None  # None: every depth of its tasks
    samples: int | None = None  # None: every sample of a cell

    def per_cell(self, n: int) -> int:
        """How many of a cell's ``n`` samples this pairing runs."""
        return n if self.samples is None else min(n, self.samples)

    def runs(self, task: str) -> bool:
        return self.tasks is None or task in self.tasks

    def runs_cell(self, cell: dict) -> bool:
        """Whether this pairing runs a grid cell (``context_length``, ``depth``) of a task it runs."""
        length, depth = cell.get("context_length"), cell.get("depth")
        return ((self.lengths is None or length is None or length in self.lengths)
                and (self.depths is None or depth is None or float(depth) in self.depths))

    def runs_sample(self, task_name: str, meta: dict) -> bool:
        """Whether a sample (its ``meta``) is among the first ``samples`` of its cell (``meta.sample``, its index)."""
        if self.samples is None:
            return True
        if not isinstance(meta.get("sample"), int):
            raise ConfigError(f"pairings ({self.label}).samples",
                              f"task {task_name}'s samples do not give their index in the cell (meta.sample), so "
                              "the cap cannot pick the first ones; drop `samples` from this pairing or use --limit")
        return meta["sample"] < self.samples


class Resolved(pydantic.BaseModel):
    """A validated config with pairings expanded and task configs typed."""

    model_config = pydantic.ConfigDict(arbitrary_types_allowed=True)

    config: RunConfig
    pairings: list[Pairing]
    tasks: dict[str, Any]  # name -> task config object
    base_dir: Path


# --- validation ------------------------------------------------------------------------
def validate_task_config(task_cls, raw: dict, where: str, base_dir: Path | None = None):
    """A task's typed config; relative paths in it (a data file) are taken from ``base_dir``, the config's folder."""
    return validate(task_cls.Config, raw or {}, where, context={"base_dir": base_dir} if base_dir else None)


def validate(model_cls: type[pydantic.BaseModel], data: Any, where: str, context: dict | None = None):
    """Validate ``data`` into ``model_cls``; the first error becomes a one-line ConfigError."""
    try:
        return model_cls.model_validate(data, context=context)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        # drop union tags: a model's class name or a constrained type's label ("constrained-int", "literal['auto']")
        loc = [p for p in err["loc"] if not (isinstance(p, str) and (p[:1].isupper() or not p.isidentifier()
                                                                      or p in TYPE_TAGS))]
        path = _join(where, loc)
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(model_cls, list(err["loc"])[:-1])
            hint = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
            raise ConfigError(path, f"unknown key{hint}") from None
        if err["type"] == "missing":
            raise ConfigError(path, "required key is missing") from None
        got = err.get("input")
        shown = f" (got {got!r})" if got is not None and not isinstance(got, dict | list) and "(got " not in \
            err["msg"] else ""
        raise ConfigError(path, f"{_lower(err['msg'])}{shown}") from None


#: the tags pydantic puts in an error's location for a union member of a plain type (never a key of ours)
TYPE_TAGS = {"int", "float", "str", "bool", "bytes", "list", "dict", "tuple", "set", "none"}


def _lower(msg: str) -> str:
    msg = msg.removeprefix("Value error, ")
    return msg[:1].lower() + msg[1:]


def _join(where: str, loc) -> str:
    out = where
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _allowed_keys(model_cls, loc) -> list[str]:
    """Field names of the model found by walking ``loc`` (pydantic's, union tags included) down from
    ``model_cls``."""
    tp: Any = model_cls
    for p in loc:
        member = _tagged(tp, p)
        if member is not None:  # a tagged union's tag: the member it names
            tp = member
            continue
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, pydantic.BaseModel):
            if p not in tp.model_fields:
                return []
            tp = tp.model_fields[p].annotation
        else:
            args = typing.get_args(tp)
            tp = args[-1] if args else None
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, pydantic.BaseModel):
        return list(tp.model_fields)
    return []


def _tagged(tp, tag):
    """The member of a discriminated union (``Annotated[A | B, Discriminator]``) whose tag is ``tag``."""
    if typing.get_origin(tp) is not Annotated or not isinstance(tag, str):
        return None
    for member in typing.get_args(typing.get_args(tp)[0]):
        meta = typing.get_args(member)[1:] if typing.get_origin(member) is Annotated else ()
        if any(isinstance(m, pydantic.Tag) and m.tag == tag for m in meta):
            return typing.get_args(member)[0]
    return None


def _unwrap(tp):
    """Strip Optional / unions down to the first pydantic model or container."""
    for arg in typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, __import__("types").UnionType) else ():
        if arg is not type(None):
            return _unwrap(arg)
    return tp
