"""``run.executor: local``: every unit scored in this process, in plan order (pairing by pairing)."""

from __future__ import annotations


def run_local(units, score_unit, sink) -> None:
    for unit in units:
        sink(unit, score_unit(unit), unit.pairing.label)
