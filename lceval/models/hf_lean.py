"""Gated MLPs, RMS norms and linear layers of transformers models computed faster while scoring.

Prefill of a batch of long prompts runs every layer on (tokens x width) tensors of tens of megabytes. glibc
maps each allocation above 32 MB anew and faults in every page, so at these sizes a temporary costs about as
much as the arithmetic that fills it. Two of transformers' modules allocate more than they need:

- **Gated MLP** (Llama, Mistral, Qwen2, SmolLM2, ...): ``down_proj(act_fn(gate_proj(x)) * up_proj(x))``
  allocates the activation and the product, two more (tokens x intermediate) tensors. Nothing else reads the
  gate's output or the activation, so the activation overwrites the one and the product the other. And a long
  input runs in equal blocks of at most ``CHUNK_TOKENS`` tokens, so the intermediate tensors stay in the heap
  and in cache. The MLP acts on each token alone; a block's rows are those of the whole matrix product.
- **RMS norm** (``x * rsqrt(mean(x^2) + eps)``, times the weight): the scaled copy takes the weight in place,
  one allocation fewer.
And a third is slow at decoding sizes: a decoding step of a batch puts one row per prompt through every **linear
layer**, and for 2 to ``FEW_ROWS`` rows MKL runs ``x W^T`` on a slow path, which ``W @ x^T`` (``weight_major``)
avoids. SmolLM2's projections, 30 layers of distinct weights, 2 threads (``benchmarks/head.py --decode``): 3.1x
faster at 2 rows, 2.6x at 3, 1.4x at 4; one row the same; 6 and 8 rows slower (0.85x, 0.78x), so they keep ``x W^T``.

Measured on SmolLM2-135M, 2 threads: at 12k tokens an MLP call took 336 ms whole and 293 ms in blocks of 2048
tokens; a norm took 11-40 ms as transformers writes it and 3-14 ms in place. Scoring 20 prompts of 4096 tokens
in batches of 4 with prefix reuse, in one process, alternated twice: 132.7 s before, 124.1 s with both (the same
predictions; system time 25 s before, 13 s). ``benchmarks/results/lmeval-side-by-side-*.txt`` has the whole
command.

The linear layers' sums are the same bits for one row (the only path a batch of one takes, as transformers'
``generate`` does) and round differently for 2 to ``FEW_ROWS`` rows (about 1e-6 relative), as a row's numbers
already do when the batch around it changes size; only plain float32 ``nn.Linear`` modules are rebound (a subclass,
a quantized layer, a 16-bit one keep their forward). The output head takes the same path at every size
(``lceval.models.hf.head_logits``).

An MLP or a norm is rebound only if it has the expected parts, and if its own forward and the lean one give identical
outputs on a random input when it is rebound: a model whose MLP or norm does anything else (another
activation placement, Gemma's ``1 + weight``, a float32 upcast of a 16-bit model) keeps its own forward. The
in-place operations are the same operations on the same values, bit for bit. Blocks are matrix products over
fewer rows: with MKL (torch's CPU build) each row's result is the same bits in blocks of a thousand rows or
more (blocks here are 1025-2048 rows; two of 138 rows did round differently), which the tests check at
SmolLM2's sizes; another BLAS may round a row's sum differently in the last bit.
"""

from __future__ import annotations

import math
import types

import torch
from torch import Tensor, nn

MLP_PARTS = ("gate_proj", "up_proj", "down_proj", "act_fn")
CHUNK_TOKENS = 2048  # 2048 x 1536 floats (SmolLM2) is 12.6 MB: in glibc's heap, and the fastest block measured
FEW_ROWS = 4  # a linear layer puts 2 to this many rows through W @ x^T (one row: the same speed and bits)


def weight_major(linear: nn.Linear, x: Tensor) -> Tensor:
    """``linear(x)`` for x (..., in) computed as ``W @ x^T``: the same products, summed in MKL's order for the
    weight-major product (the same bits as ``x W^T`` for one row)."""
    flat = x.reshape(-1, x.shape[-1])
    out = torch.mm(linear.weight, flat.T).T.contiguous()
    if linear.bias is not None:
        out += linear.bias
    return out.view(*x.shape[:-1], out.shape[-1])


def _linear_forward(self, x: Tensor) -> Tensor:
    """``nn.Linear.forward``, with 2 to ``FEW_ROWS`` rows on the CPU as ``W @ x^T`` (``weight_major``)."""
    if 2 <= x.shape[:-1].numel() <= FEW_ROWS and x.device.type == "cpu":
        return weight_major(self, x)
    return nn.functional.linear(x, self.weight, self.bias)


def _silu_in_place(x: Tensor) -> Tensor:
    return nn.functional.silu(x, inplace=True)


def _gated(self, x: Tensor) -> Tensor:
    act = _silu_in_place if self._lceval_silu else self.act_fn
    return self.down_proj(act(self.gate_proj(x)).mul_(self.up_proj(x)))


def _mlp_forward(self, x: Tensor) -> Tensor:
    """``down_proj(act_fn(gate_proj(x)) * up_proj(x))``: the activation and the product in place, in equal blocks
    of at most ``self._lceval_chunk`` tokens."""
    rows = x.shape[:-1].numel()
    chunk = self._lceval_chunk
    if rows <= chunk:
        return _gated(self, x)
    flat = x.reshape(rows, x.shape[-1])
    size = math.ceil(rows / math.ceil(rows / chunk))  # equal blocks: no short remainder
    parts = [_gated(self, flat[start:start + size]) for start in range(0, rows, size)]
    return torch.cat(parts).view(*x.shape[:-1], parts[0].shape[-1])


def _rms_forward(self, x: Tensor) -> Tensor:
    """``weight * (x * rsqrt(mean(x^2) + eps))`` with the product by the weight in place."""
    variance = x.pow(2).mean(-1, keepdim=True)
    return (x * variance.add_(self.variance_epsilon).rsqrt_()).mul_(self.weight)


def _is_rms_norm(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return (type(module).__name__.endswith("RMSNorm") and isinstance(weight, nn.Parameter) and weight.dim() == 1
            and isinstance(getattr(module, "variance_epsilon", None), float))


def _rebind(module: nn.Module, forward, width: int, like: Tensor) -> bool:
    """Bind ``forward`` to ``module`` if it gives its own forward's output bit for bit on a random input of
    ``width`` features, in ``like``'s dtype and on its device."""
    own = module.forward
    lean = types.MethodType(forward, module)
    rng = torch.Generator(like.device).manual_seed(0)  # not the global generator: runs stay as seeded
    x = torch.randn(2, 3, width, generator=rng, device=like.device).to(like.dtype)
    if torch.equal(own(x), lean(x)):
        module.forward = lean
        return True
    return False


@torch.no_grad()
def lean_modules(model: nn.Module) -> dict[str, int]:
    """Rebind the gated MLPs, RMS norms and plain float32 linear layers of ``model``; returns how many of each.
    (autograd follows the in-place operations, so gradients are the modules' own too.)"""
    count = {"mlp": 0, "norm": 0, "linear": 0}
    for module in model.modules():
        if "_lceval_lean" in vars(module):
            continue  # already rebound
        if type(module) is nn.Linear and module.weight.dtype == torch.float32:
            module.forward = types.MethodType(_linear_forward, module)
            module._lceval_lean = "linear"
            count["linear"] += 1
            continue
        if all(hasattr(module, name) for name in MLP_PARTS) and isinstance(module.gate_proj, nn.Linear):
            gate = module.gate_proj
            module._lceval_silu = type(module.act_fn).__name__ in ("SiLU", "SiLUActivation")
            module._lceval_chunk = CHUNK_TOKENS
            if _rebind(module, _mlp_forward, gate.in_features, gate.weight):
                module._lceval_lean = "mlp"
                count["mlp"] += 1
            else:
                del module._lceval_silu, module._lceval_chunk
        elif _is_rms_norm(module):
            if _rebind(module, _rms_forward, module.weight.shape[0], module.weight):
                module._lceval_lean = "norm"
                count["norm"] += 1
    return count
