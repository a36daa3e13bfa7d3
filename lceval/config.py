"""YAML run configs -> validated, typed objects.

Every user error becomes a ``ConfigError`` whose message starts with the key
path (``tasks.niah.depths[2]``) and says what is allowed. ``yaml.safe_load``
only.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml

from lceval import registry
from lceval.errors import ConfigError, UserError
from lceval.models.checkpoint import ZOO_PREFIX, is_complete, read_card, zoo_path
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


class ModelSpec(Strict):
    """A model.

    * ``type: reference``: lceval's transformer, from a ``checkpoint`` directory or a ``train`` recipe;
    * ``type: hf``: a local Hugging Face causal LM directory or GGUF file (``path``; safetensors only), with ``dtype``,
      ``chat_template``, ``trust_remote_code`` and a ``rope`` override;
    * every type: ``dtype`` and ``device`` (default: ``run.device``);
    * ``type: module``: ``factory: package.module:callable`` returning a model that follows
      ``lceval.models.module.LcevalModel`` and a tokenizer (``options`` are its keyword arguments).
    """

    type: str = "reference"
    checkpoint: SafePath | None = None
    train: TrainRecipe | None = None
    path: SafePath | None = None
    factory: str | None = None
    options: dict[str, Any] = pydantic.Field(default_factory=dict)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] | None = pydantic.Field(None, description="default: run.device")
    chat_template: bool = False
    trust_remote_code: bool = False
    rope: RopeSpec | None = None

    @pydantic.field_validator("factory")
    @classmethod
    def _factory_ref(cls, v):
        import re

        if v is not None and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", v):
            raise ValueError(f"must be package.module:callable, e.g. mypkg.models:build (got {v!r})")
        return v

    @pydantic.model_validator(mode="after")
    def _one_source(self):
        given = {k for k in ("checkpoint", "train", "path", "factory") if getattr(self, k) is not None}
        if self.type == "reference":
            if (self.checkpoint is None) == (self.train is None):
                raise ValueError("a reference model needs exactly one of 'checkpoint' or 'train'")
            allowed = {"checkpoint", "train"}
        elif self.type == "hf":
            if self.path is None:
                raise ValueError("an hf model needs 'path': a local directory saved with save_pretrained, or a .gguf file")
            allowed = {"path"}
        elif self.type == "module":
            if self.factory is None:
                raise ValueError("a module model needs 'factory: package.module:callable'")
            allowed = {"factory"}
        else:
            return self  # a plugin's own adapter checks its fields
        if given - allowed:
            raise ValueError(f"a {self.type} model takes {' or '.join(sorted(allowed))}, not "
                             f"{', '.join(sorted(given - allowed))}")
        if self.type != "hf" and (self.chat_template or self.trust_remote_code or self.rope is not None):
            raise ValueError("chat_template, trust_remote_code and rope apply to hf models only")
        return self


class PairingSpec(Strict):
    """A model with an attention variant. Lists in either field expand to their cross product."""

    model: str | list[str]
    attention: AttentionSpec | list[AttentionSpec] = pydantic.Field(default_factory=lambda: AttentionSpec(name="full"))
    label: str | None = None
    tasks: list[str] | None = pydantic.Field(
        None, min_length=1, description="which of the config's tasks these pairings run (default: every task)")


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
        4096, description="largest score matrix a quadratic-memory variant may build")
    threads: pydantic.PositiveInt | Literal["auto"] = pydantic.Field(
        "auto", description="torch threads; auto: $OMP_NUM_THREADS if set, else the cores this process may use")
    answer: Literal["auto", "generate", "full"] = pydantic.Field(
        "auto", description="auto: teacher forcing where it equals greedy decoding, else generation that stops "
                            "once the score is decided; generate: always generation; full: generation to a stop "
                            "token or the whole budget (complete predictions)")
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

    def runs(self, task: str) -> bool:
        return self.tasks is None or task in self.tasks


class Resolved(pydantic.BaseModel):
    """A validated config with pairings expanded and task configs typed."""

    model_config = pydantic.ConfigDict(arbitrary_types_allowed=True)

    config: RunConfig
    pairings: list[Pairing]
    tasks: dict[str, Any]  # name -> task config object
    base_dir: Path


# --- loading ---------------------------------------------------------------------------
def read_yaml(path: Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a directory; pass the path of a YAML config file (see configs/)")
    if not path.is_file():
        raise UserError(f"config file {path} not found; pass the path of a YAML config (see configs/)")
    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not a text file (byte {exc.start} is not UTF-8); pass a YAML config") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError("", f"{path}: the top level must be a mapping with keys run, models, pairings, tasks")
    return data


def _yaml_value(item: str, raw: str):
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise UserError(f"--set {item!r}: the value is not valid YAML ({getattr(exc, 'problem', exc)}); "
                        "quote strings, e.g. --set 'run.name=\"my run\"'") from None


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``key.path=value`` overrides (value parsed as YAML) to a raw config dict."""
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected key.path=value, e.g. --set tasks.niah.samples=2")
        path, raw = item.split("=", 1)
        value = _yaml_value(item, raw)
        keys = path.strip().split(".")
        if not all(keys):
            raise UserError(f"--set {item!r}: the key path has an empty part; name the key, e.g. "
                            "--set tasks.niah.samples=2")
        node: Any = data
        for i, key in enumerate(keys):
            last = i == len(keys) - 1
            if isinstance(node, list):
                if not key.isdigit() or int(key) >= len(node):
                    raise ConfigError(".".join(keys[: i + 1]), f"list index out of range (0..{len(node) - 1})")
                if last:
                    node[int(key)] = value
                else:
                    node = node[int(key)]
            elif isinstance(node, dict):
                if last:
                    node[key] = value
                else:
                    node = node.setdefault(key, {})
            else:
                raise ConfigError(".".join(keys[:i]), "is a value, not a mapping; cannot set a key inside it")
    return data


def load_config(path: Path, overrides: list[str] = ()) -> Resolved:
    data = apply_overrides(read_yaml(path), list(overrides))
    return resolve(data, base_dir=Path(path).resolve().parent)


def inline_recipes(data: dict, base_dir: Path) -> dict:
    """Replace ``models.<m>.train: path/to/recipe.yaml`` by that recipe (its 'out' is ignored)."""
    for name, spec in (data.get("models") or {}).items() if isinstance(data.get("models"), dict) else ():
        if isinstance(spec, dict) and isinstance(spec.get("train"), str):
            path = Path(spec["train"])
            path = path if path.is_absolute() else base_dir / path
            if not path.is_file():
                raise ConfigError(f"models.{name}.train", f"recipe file {path} not found (paths are relative to the "
                                  "config's folder); give a recipe mapping or an existing recipe YAML")
            recipe = read_yaml(path)
            recipe.pop("out", None)
            spec["train"] = recipe
    return data


def resolve(data: dict, base_dir: Path) -> Resolved:
    data = inline_recipes(data, base_dir)
    cfg = validate(RunConfig, data, "")
    for name, spec in cfg.models.items():
        registry.models.get(spec.type, where=f"models.{name}.type")
        if spec.checkpoint is not None and str(spec.checkpoint).startswith(ZOO_PREFIX):
            try:
                spec.checkpoint = zoo_path(spec.checkpoint)
            except UserError as exc:
                raise ConfigError(f"models.{name}.checkpoint", str(exc)) from None
        elif spec.checkpoint is not None and not spec.checkpoint.is_absolute():
            spec.checkpoint = (base_dir / spec.checkpoint).resolve()
        if spec.path is not None and not spec.path.is_absolute():
            spec.path = (base_dir / spec.path).resolve()
        if spec.type in ("hf", "module"):
            check_external(spec, f"models.{name}")
        if spec.type == "reference" and spec.checkpoint is not None:
            if not is_complete(spec.checkpoint):
                raise ConfigError(f"models.{name}.checkpoint", f"no reference checkpoint at {spec.checkpoint} "
                                  "(needs model.safetensors, card.json, tokenizer.json); train one with `lceval train`")
        if spec.train is not None:
            check_recipe(spec.train, f"models.{name}.train")
    pairings: list[Pairing] = []
    positions: dict[str, str | None] = {}  # model -> its position encoding, read once
    for i, p in enumerate(cfg.pairings):
        models = p.model if isinstance(p.model, list) else [p.model]
        attns = p.attention if isinstance(p.attention, list) else [p.attention]
        for m in models:
            if m not in cfg.models:
                raise ConfigError(f"pairings[{i}].model", f"unknown model {m!r}; defined models: {', '.join(cfg.models)}")
            position = positions.setdefault(m, model_position(cfg.models[m]))
            for a in attns:
                attn = check_attention(a, f"pairings[{i}].attention")
                check_compatible(position, attn, f"pairings[{i}].attention")
                if p.label and len(models) * len(attns) > 1:
                    raise ConfigError(f"pairings[{i}].label", f"one label cannot name the {len(models) * len(attns)} "
                                      "pairings this entry expands to; split the entry or drop the label")
                label = p.label or f"{m}/{attn.label}"
                pairings.append(Pairing(model=m, attention=a, label=label, tasks=p.tasks))
    seen: set[str] = set()
    for p in pairings:
        if p.label in seen:
            raise ConfigError("pairings", f"pairing {p.label!r} appears twice; give each pairing a distinct label")
        seen.add(p.label)
    for i, p in enumerate(cfg.pairings):
        unknown = [t for t in p.tasks or [] if t not in cfg.tasks]
        if unknown:
            raise ConfigError(f"pairings[{i}].tasks", f"{unknown[0]!r} is not one of the config's tasks "
                              f"({', '.join(cfg.tasks) or 'none'}); list tasks defined under `tasks:`")
    tasks = {}
    for name, raw in cfg.tasks.items():
        cls = registry.tasks.get(name, where=f"tasks.{name}")
        tasks[name] = validate_task_config(cls, raw or {}, f"tasks.{name}", base_dir)
    return Resolved(config=cfg, pairings=pairings, tasks=tasks, base_dir=base_dir)


def check_attention(spec: AttentionSpec, where: str):
    registry.attention.get(spec.name, where=f"{where}.name")
    try:
        return spec.build()
    except UserError as exc:
        raise ConfigError(where, str(exc)) from None


def check_external(spec: ModelSpec, where: str) -> None:
    """Config-time checks of hf and module models: weights, model type, rope override, factory import."""
    if spec.type == "hf":
        from lceval.models.hf import inspect_dir, position_of

        try:
            raw = inspect_dir(spec.path, spec.trust_remote_code)
        except UserError as exc:
            raise ConfigError(f"{where}.path", str(exc)) from None
        if spec.rope is not None and position_of(raw) != "rotary":
            raise ConfigError(f"{where}.rope", f"the model at {spec.path} uses {position_of(raw)} positions; "
                              "a RoPE override needs a rotary model")
    else:
        from lceval.models.module import load_factory

        try:
            load_factory(spec.factory)
        except UserError as exc:
            raise ConfigError(f"{where}.factory", str(exc)) from None


def model_position(spec: ModelSpec) -> str | None:
    """The position encoding a model uses (a reference model's recipe or card, an hf model's config)."""
    if spec.type == "hf":
        from lceval.models.hf import position_of, read_config

        return position_of(read_config(spec.path))
    if spec.train is not None:
        return spec.train.position
    if spec.type == "reference" and spec.checkpoint is not None:
        return read_card(spec.checkpoint)["architecture"]["position"]
    return None


def check_compatible(position: str | None, attention, where: str) -> None:
    """Refuse pairings that cannot run, e.g. a score bias (ALiBi) with linear attention."""
    if position is None or position not in registry.positions.names():
        return  # an external model's own encoding (e.g. learned absolute): nothing lceval applies
    pos_cls = registry.positions.get(position)
    if pos_cls.needs_score_mod and not attention.supports_score_mod:
        able = [n for n in registry.attention.names() if registry.attention.get(n).supports_score_mod]
        raise ConfigError(where, f"{attention.name} attention cannot apply {position}'s score bias; "
                          f"pair {position} models with {', '.join(able)}")


def check_recipe(recipe: TrainRecipe, where: str) -> None:
    registry.positions.get(recipe.position, where=f"{where}.position")
    check_compatible(recipe.position, check_attention(recipe.attention, f"{where}.attention"), f"{where}.attention")
    if recipe.tasks is not None:
        for name, mix in recipe.tasks.items():
            cls = registry.tasks.get(name, where=f"{where}.tasks.{name}")
            validate_task_config(cls, mix.config, f"{where}.tasks.{name}.config")
    else:
        cls = registry.tasks.get(recipe.task, where=f"{where}.task")
        validate_task_config(cls, recipe.task_config, f"{where}.task_config")
    if recipe.d_model % recipe.n_heads:
        raise ConfigError(f"{where}.n_heads", f"must divide d_model ({recipe.d_model}); got {recipe.n_heads}")
    if recipe.n_kv_heads is not None and recipe.n_heads % recipe.n_kv_heads:
        raise ConfigError(f"{where}.n_kv_heads", f"must divide n_heads ({recipe.n_heads}); got {recipe.n_kv_heads}")
    if recipe.max_length is not None and recipe.max_length < recipe.train_length:
        raise ConfigError(f"{where}.max_length", f"the learned table ({recipe.max_length} rows) must cover the "
                          f"training length ({recipe.train_length}); raise max_length or omit it")


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
            allowed = _allowed_keys(model_cls, loc[:-1])
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
    """Field names of the model found by walking ``loc`` down from ``model_cls``."""
    tp: Any = model_cls
    for p in loc:
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


def _unwrap(tp):
    """Strip Optional / unions down to the first pydantic model or container."""
    for arg in typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, __import__("types").UnionType) else ():
        if arg is not type(None):
            return _unwrap(arg)
    return tp
