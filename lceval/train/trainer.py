"""Training a reference model on a task's generator at a short length.

Deterministic from the recipe's seed. Logits are computed only at labelled
positions (the answers), which is most of the speed on a CPU.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lceval import registry
from lceval.attention import build_attention
from lceval.config import TrainRecipe, validate_task_config
from lceval.models.checkpoint import save_checkpoint
from lceval.models.reference import Architecture, ReferenceTransformer
from lceval.tokenizer import word_level


def build_model(recipe: TrainRecipe, vocab_size: int) -> ReferenceTransformer:
    arch = Architecture(
        vocab_size=vocab_size, d_model=recipe.d_model, n_layers=recipe.n_layers, n_heads=recipe.n_heads,
        n_kv_heads=recipe.n_kv_heads, position=recipe.position, conv_kernel=recipe.conv_kernel,
        max_length=recipe.max_length or recipe.train_length,
    )
    return ReferenceTransformer(arch, build_attention(recipe.attention.name, **recipe.attention.params))


def _batch(task, rng, recipe, tokenizer, device):
    exs = [task.training_example(rng, recipe.train_length, tokenizer) for _ in range(recipe.batch_size)]
    ids = torch.tensor([e.ids for e in exs], device=device)  # (B, T)
    k = max(len(e.labels) for e in exs)
    pos = torch.zeros(len(exs), k, dtype=torch.long, device=device)
    lab = torch.full((len(exs), k), -100, dtype=torch.long, device=device)
    for i, e in enumerate(exs):
        pos[i, : len(e.labels)] = torch.tensor(e.label_positions)
        lab[i, : len(e.labels)] = torch.tensor(e.labels)
    return ids, pos, lab


def train(recipe: TrainRecipe, out_dir: Path, *, progress: bool = True, device: str | None = None) -> dict:
    """Train, write ``model.safetensors`` + ``card.json`` + ``tokenizer.json`` to out_dir, return the card."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    task_cls = registry.tasks.get(recipe.task, where="train.task")
    task = task_cls(validate_task_config(task_cls, recipe.task_config, "train.task_config"), seed=recipe.seed)
    tokenizer = word_level(task.vocabulary())
    model = build_model(recipe, tokenizer.vocab_size).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay, betas=(0.9, 0.98))

    def lr_at(step):  # linear warm-up, cosine decay to 10%
        if step < recipe.warmup:
            return (step + 1) / recipe.warmup
        t = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    start = time.perf_counter()
    bar = tqdm(range(recipe.steps), desc=f"train {recipe.position}/{recipe.attention.name}", disable=not progress,
               unit="step", dynamic_ncols=True)
    ema_acc = 0.0
    model.train()
    for step in bar:
        ids, pos, lab = _batch(task, rng, recipe, tokenizer, device)
        logits = model.logits_at(model.hidden(ids), pos)  # (B, K, V)
        loss = F.cross_entropy(logits.flatten(0, 1), lab.flatten(), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            valid = lab != -100
            acc = ((logits.argmax(-1) == lab) & valid).sum().item() / max(1, valid.sum().item())
        ema_acc = acc if step == 0 else 0.95 * ema_acc + 0.05 * acc
        bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{ema_acc:.2f}")
    seconds = time.perf_counter() - start
    model.eval()
    measured = evaluate_training_length(model, task, tokenizer, recipe, device)
    card = {
        "format": "lceval-reference/1",
        "architecture": model.arch.model_dump(),
        "tokenizer": {"kind": tokenizer.name, "file": "tokenizer.json", "vocab_size": tokenizer.vocab_size},
        "recipe": recipe.model_dump(mode="json"),
        "training_length": recipe.train_length,
        "train_seconds": round(seconds, 1),
        "device": device,
        "measured": measured,
    }
    save_checkpoint(model, tokenizer, card, out_dir)
    return card


@torch.no_grad()
def evaluate_training_length(model, task, tokenizer, recipe: TrainRecipe, device) -> dict:
    """Needle accuracy on fresh samples at the training length (greedy exact match)."""
    from lceval.scoring import score_batch

    if recipe.eval_samples == 0:
        return {}
    cells = [c for c in task.cells() if c.get("context_length") == recipe.train_length] or [
        dict(c, context_length=recipe.train_length) for c in task.cells()[:1]]
    per = max(1, recipe.eval_samples // len(cells))
    samples = [s for c in cells for s in task.cell_samples(c, tokenizer, per)]
    correct = 0
    for i in range(0, len(samples), 32):
        res = score_batch(model, samples[i : i + 32], device)
        correct += sum(r.correct for r in res)
    return {"task": task.name, "context_length": recipe.train_length, "samples": len(samples),
            "accuracy": round(correct / len(samples), 4)}
