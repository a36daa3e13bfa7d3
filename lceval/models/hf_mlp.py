"""Gated MLPs of transformers models computed in place while scoring.

Llama-family models (Llama, Mistral, Qwen2, SmolLM2, ...) compute their MLP as
``down_proj(act_fn(gate_proj(x)) * up_proj(x))``. Written that way, every call
allocates two more (tokens x intermediate) tensors, the activation and the
product: at 4 prompts of 3k tokens, 75 MB each, fresh from the operating
system (glibc maps an allocation this large anew and faults in every page).
Nothing else reads the gate's output or the activation, so the activation can
overwrite the one and the product the other: the same operations on the same
values, bit for bit, with two allocations fewer per layer.

Measured on SmolLM2-135M (prefill of 4 prompts of 4096 tokens sharing 1052, 2
threads, three alternations): 33.4 s with transformers' MLP, 30.7 s in place.

A module is rebound only if it has the four parts, and if its own forward and
the in-place one give identical outputs on a random input when it is rebound:
a model whose MLP does anything else keeps its own forward.
"""

from __future__ import annotations

import types

import torch
from torch import Tensor, nn

PARTS = ("gate_proj", "up_proj", "down_proj", "act_fn")


def _silu_in_place(x: Tensor) -> Tensor:
    return nn.functional.silu(x, inplace=True)


def _in_place_forward(self, x: Tensor) -> Tensor:
    """``down_proj(act_fn(gate_proj(x)) * up_proj(x))``, the activation and the product in place."""
    act = _silu_in_place if self._lceval_silu else self.act_fn
    return self.down_proj(act(self.gate_proj(x)).mul_(self.up_proj(x)))


@torch.no_grad()
def lean_mlps(model: nn.Module) -> int:
    """Rebind the gated MLPs of ``model`` to compute in place; returns how many. (autograd follows the in-place
    operations, so gradients are the module's own too.)"""
    count = 0
    for module in model.modules():
        if not all(hasattr(module, name) for name in PARTS) or "_lceval_silu" in vars(module):
            continue
        gate = module.gate_proj
        if not isinstance(gate, nn.Linear):
            continue
        own = module.forward
        module._lceval_silu = type(module.act_fn).__name__ in ("SiLU", "SiLUActivation")
        lean = types.MethodType(_in_place_forward, module)
        rng = torch.Generator(gate.weight.device).manual_seed(0)  # not the global generator: runs stay as seeded
        x = torch.randn(2, 3, gate.in_features, generator=rng, device=gate.weight.device).to(gate.weight.dtype)
        if torch.equal(own(x), lean(x)):
            module.forward = lean
            count += 1
        else:
            del module._lceval_silu
    return count
