"""One small generic registry over entry points, loaded lazily.

Built-ins and third-party plugins register the same way: an entry point in the
groups ``lceval.tasks``, ``lceval.models``, ``lceval.attention`` and
``lceval.positions`` pointing at a class. ``register`` adds one in-process
(handy in tests and notebooks); entry points are read on first lookup.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from lceval.errors import UserError

GROUPS = {
    "tasks": "lceval.tasks",
    "models": "lceval.models",
    "attention": "lceval.attention",
    "positions": "lceval.positions",
}


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self.group = GROUPS[kind]
        self._loaded: dict[str, Any] = {}
        self._extra: dict[str, Any] = {}

    def _entry_points(self):
        return {ep.name: ep for ep in entry_points(group=self.group)}

    def names(self) -> list[str]:
        return sorted(set(self._entry_points()) | set(self._extra))

    def get(self, name: str, *, where: str | None = None) -> Any:
        if name in self._extra:
            return self._extra[name]
        if name not in self._loaded:
            eps = self._entry_points()
            if name not in eps:
                at = f"{where}: " if where else ""
                raise UserError(
                    f"{at}unknown {self.kind} plugin {name!r}; registered: {', '.join(self.names()) or 'none'}"
                )
            try:
                self._loaded[name] = eps[name].load()
            except Exception as exc:  # a broken third-party plugin
                raise UserError(f"{self.kind} plugin {name!r} failed to load ({eps[name].value}): {exc}") from exc
        return self._loaded[name]

    def register(self, name: str, obj: Any | None = None):
        """Register ``obj`` under ``name``; usable as a decorator."""

        def deco(o):
            self._extra[name] = o
            return o

        return deco(obj) if obj is not None else deco


tasks = Registry("tasks")
models = Registry("models")
attention = Registry("attention")
positions = Registry("positions")

REGISTRIES = {"tasks": tasks, "models": models, "attention": attention, "positions": positions}
