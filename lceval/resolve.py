"""Config files -> a ``Resolved`` run: YAML, ``--set`` overrides, recipe files, and every check.

``load_config(path, overrides)`` reads a YAML file (``yaml.safe_load`` only),
applies ``--set key.path=value`` overrides, inlines ``train:`` recipe files,
validates against the schema (``lceval.config``), asks each model's adapter to
check its own files (``ModelAdapter.check_spec``) and position encoding
(``position_of``), expands pairings and types every task config. Every
problem is a one-line ``ConfigError`` naming its key path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from lceval import registry
from lceval.config import AttentionSpec, Pairing, PairingSpec, Resolved, RunConfig, TrainRecipe, validate, validate_task_config
from lceval.errors import ConfigError, UserError


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


def load_config(path: Path, overrides: list[str] = (), lengths: list[int] | None = None) -> Resolved:
    data = apply_overrides(read_yaml(path), list(overrides))
    if lengths:
        data = only_lengths(data, lengths)
    return resolve(data, base_dir=Path(path).resolve().parent)


def only_lengths(data: dict, lengths: list[int]) -> dict:
    """The config cut down to the given context lengths (``--lengths``, a quick look at a big grid): each task and
    each pairing keeps only those of its lengths; a task left with none is dropped, and so is a pairing left with
    no task or no length. The result is an ordinary config, so its run identity says what was cut."""
    keep = set(lengths)
    tasks = data.get("tasks")
    if not isinstance(tasks, dict):
        return data  # validation names the problem
    have = sorted({n for t in tasks.values() if isinstance(t, dict) and isinstance(t.get("lengths"), list)
                   for n in t["lengths"]})
    for name in list(tasks):
        t = tasks[name]
        if isinstance(t, dict) and isinstance(t.get("lengths"), list):
            t["lengths"] = [n for n in t["lengths"] if n in keep]
            if not t["lengths"]:
                del tasks[name]
    if not tasks:
        raise UserError(f"--lengths {','.join(map(str, lengths))}: no task of the config has these lengths "
                        f"(it has {', '.join(map(str, have)) or 'none'}); pick some of those")
    pairings = data.get("pairings")
    if isinstance(pairings, list):
        kept = []
        for p in pairings:
            if isinstance(p, dict):
                if isinstance(p.get("tasks"), list):
                    p["tasks"] = [t for t in p["tasks"] if t in tasks]
                    if not p["tasks"]:
                        continue
                if isinstance(p.get("lengths"), list):
                    p["lengths"] = [n for n in p["lengths"] if n in keep]
                    if not p["lengths"]:
                        continue
            kept.append(p)
        if not kept:
            raise UserError(f"--lengths {','.join(map(str, lengths))}: no pairing of the config runs these lengths; "
                            "pick lengths its pairings list")
        data["pairings"] = kept
    return data


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
    if cfg.run.executor == "ray":
        from lceval.executors.ray import check_available

        check_available()  # Ray is needed: say so now, not after models are loaded
    for name, spec in cfg.models.items():
        adapter = registry.models.get(spec.type, where=f"models.{name}.type")
        for field in ("checkpoint", "path"):  # paths in a config are relative to its folder
            value = getattr(spec, field, None)
            if value is not None and not value.is_absolute() and not str(value).startswith("zoo:"):
                setattr(spec, field, (base_dir / value).resolve())
        adapter.check_spec(spec, f"models.{name}")  # the model type's own checks of its files
        if getattr(spec, "train", None) is not None:
            check_recipe(spec.train, f"models.{name}.train")
    pairings: list[Pairing] = []
    positions: dict[str, str | None] = {}  # model -> its position encoding, read once
    for i, p in enumerate(cfg.pairings):
        models = p.model if isinstance(p.model, list) else [p.model]
        attns = p.attention if isinstance(p.attention, list) else [p.attention]
        for m in models:
            if m not in cfg.models:
                raise ConfigError(f"pairings[{i}].model", f"unknown model {m!r}; defined models: {', '.join(cfg.models)}")
            spec = cfg.models[m]
            position = positions.setdefault(m, registry.models.get(spec.type).position_of(spec))
            for a in attns:
                attn = check_attention(a, f"pairings[{i}].attention")
                check_compatible(position, attn, f"pairings[{i}].attention")
                if p.label and len(models) * len(attns) > 1:
                    raise ConfigError(f"pairings[{i}].label", f"one label cannot name the {len(models) * len(attns)} "
                                      "pairings this entry expands to; split the entry or drop the label")
                label = p.label or f"{m}/{attn.label}" + (f" {p.ablate.label}" if p.ablate else "")
                if p.ablate is not None and p.ablate.from_run is not None:
                    if not p.ablate.from_run.is_absolute():
                        p.ablate.from_run = (base_dir / p.ablate.from_run).resolve()
                    retrieval_file(p.ablate.from_run, f"pairings[{i}].ablate.from")
                pairings.append(Pairing(model=m, attention=a, label=label, tasks=p.tasks, ablate=p.ablate,
                                        lengths=p.lengths, depths=p.depths, samples=p.samples))
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
    for i, p in enumerate(cfg.pairings):
        check_cell_filter(p, tasks, f"pairings[{i}]")
    return Resolved(config=cfg, pairings=pairings, tasks=tasks, base_dir=base_dir)


def check_cell_filter(p: PairingSpec, tasks: dict, where: str) -> None:
    """A pairing's ``lengths`` and ``depths`` must each name a cell of some task it runs (else it runs nothing
    there, which is a typo, not a choice)."""
    if p.lengths is None and p.depths is None:
        return
    names = p.tasks or list(tasks)
    cells = [c for n in names for c in registry.tasks.get(n)(tasks[n]).cells()]
    for key, field in (("context_length", "lengths"), ("depth", "depths")):
        have = sorted({float(c[key]) if key == "depth" else c[key] for c in cells if c.get(key) is not None})
        for j, v in enumerate(getattr(p, field) or []):
            if v not in have:
                shown = ", ".join(f"{x:g}" for x in have) or "none"
                raise ConfigError(f"{where}.{field}[{j}]", f"{v:g} is not a {key.replace('_', ' ')} of the tasks this "
                                  f"pairing runs ({', '.join(names)}: {shown}); add it to a task's {field} or drop it")


def retrieval_file(run_dir: Path, where: str) -> Path:
    """An earlier run's ``report/retrieval_heads.csv`` (the heads an ablation ranks by)."""
    path = Path(run_dir) / "report" / "retrieval_heads.csv"
    if not path.is_file():
        raise ConfigError(where, f"{path} not found; give the --out directory of a run whose report ranked "
                          "retrieval heads (a run of a task with evidence spans, run.capture on)")
    return path


def check_attention(spec: AttentionSpec, where: str):
    registry.attention.get(spec.name, where=f"{where}.name")
    try:
        return spec.build()
    except UserError as exc:
        raise ConfigError(where, str(exc)) from None


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
