"""Probe for FINDINGS.md (induction, finding 2): does zoo:induction-rotary-c0 fail at 2x its training length
because of relative distances it never saw (then position interpolation, positions x 0.5, should restore it)
or because twice as many keys share the softmax (then it should not)?

    python reports/zoo/probes/rotary_interpolation.py

Printed on 2026-11-22 (2-core CPU, 120 fresh samples per length, seed 77):

    positions x 1.0: 64: 100%, 128: 27%, 256: 3%
    positions x 0.5: 64: 58%, 128: 54%, 256: 3%
    positions x 0.25: 64: 17%, 128: 22%, 256: 15%
"""

from __future__ import annotations

import torch

from lceval.models.checkpoint import load_checkpoint, zoo_path
from lceval.position import Rotary
from lceval.scoring import score_batch
from lceval.tasks.recall import Induction, InductionConfig


def scaled_angles(scale: float):
    """Rotary.angles with every position multiplied by ``scale`` (position interpolation)."""

    def angles(self, offset, T, dh, device, dtype):
        half = dh // 2
        inv = 1.0 / (10000.0 ** (torch.arange(half, dtype=torch.float32) / half))
        ang = (torch.arange(offset, offset + T, dtype=torch.float32) * scale)[:, None] * inv
        return ang.cos().to(device, dtype), ang.sin().to(device, dtype)

    return angles


def main() -> None:
    model, tok, _ = load_checkpoint(zoo_path("zoo:induction-rotary-c0"), "flash")
    original = Rotary.angles
    try:
        for scale in (1.0, 0.5, 0.25):
            Rotary.angles = scaled_angles(scale)
            row = []
            for length in (64, 128, 256):
                task = Induction(InductionConfig(lengths=[length], depths=[0.1, 0.5, 0.9], samples=40), seed=77)
                samples = task.samples(tok)
                with torch.no_grad():
                    acc = sum(r.score for r in score_batch(model, task, samples, tok)) / len(samples)
                row.append(f"{length}: {acc:.0%}")
            print(f"positions x {scale}:", ", ".join(row))
    finally:
        Rotary.angles = original


if __name__ == "__main__":
    main()
