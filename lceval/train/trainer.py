"""Training a reference model on task generators at a short length.

Deterministic from the recipe's seed. Examples may differ in length: they are
right-padded into a batch (causal attention never looks ahead, so padding
changes nothing before it). Logits are computed only at labelled positions,
which is most of the speed on a CPU. A mixture of tasks draws each sequence's
task by weight.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
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
from lceval.task import Task, TrainingExample
from lceval.tokenizer import word_level

#: the card's accuracy is measured on samples drawn with this seed offset, never the evaluation's own
FRESH_SEED_OFFSET = 1_000_003


def build_model(recipe: TrainRecipe, vocab_size: int) -> ReferenceTransformer:
    arch = Architecture(
        vocab_size=vocab_size, d_model=recipe.d_model, n_layers=recipe.n_layers, n_heads=recipe.n_heads,
        n_kv_heads=recipe.n_kv_heads, position=recipe.position, conv_kernel=recipe.conv_kernel,
        max_length=recipe.max_length or recipe.train_length,
    )
    return ReferenceTransformer(arch, build_attention(recipe.attention.name, **recipe.attention.params))


def build_tasks(recipe: TrainRecipe, seed: int) -> dict[str, Task]:
    out = {}
    for name, mix in recipe.mixture().items():
        cls = registry.tasks.get(name, where="train.task")
        out[name] = cls(validate_task_config(cls, mix.config, f"train.tasks.{name}.config"), seed=seed)
    return out


def mixture_tokenizer(tasks: dict[str, Task]):
    """The word-level tokenizer over every task's vocabulary, in first-seen order (a model's own)."""
    return word_level(list(dict.fromkeys(w for t in tasks.values() for w in t.vocabulary())))


def pad_batch(exs: list[TrainingExample], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad examples of any lengths: ids (B, T), label positions and labels (B, K; -100 = none)."""
    T = max(len(e.ids) for e in exs)
    K = max(len(e.labels) for e in exs)
    ids = torch.full((len(exs), T), pad_id, dtype=torch.long)
    pos = torch.zeros(len(exs), K, dtype=torch.long)
    lab = torch.full((len(exs), K), -100, dtype=torch.long)
    for i, e in enumerate(exs):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
        pos[i, : len(e.labels)] = torch.tensor(e.label_positions)
        lab[i, : len(e.labels)] = torch.tensor(e.labels)
    return ids.to(device), pos.to(device), lab.to(device)


def train(recipe: TrainRecipe, out_dir: Path, *, progress: bool = True, device: str | None = None) -> dict:
    """Train, write ``model.safetensors`` + ``card.json`` + ``tokenizer.json`` to out_dir, return the card."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    tasks = build_tasks(recipe, recipe.seed)
    names = list(tasks)
    weights = np.array([recipe.mixture()[n].weight for n in names], dtype=float)
    weights /= weights.sum()
    tokenizer = mixture_tokenizer(tasks)
    pad_id = tokenizer.backend.token_to_id("[PAD]")
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
        picks = rng.choice(len(names), size=recipe.batch_size, p=weights) if len(names) > 1 else [0] * recipe.batch_size
        exs = [tasks[names[j]].training_example(rng, recipe.train_length, tokenizer) for j in picks]
        ids, pos, lab = pad_batch(exs, pad_id, device)
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
    measured = evaluate_training_length(model, recipe, tokenizer, device)
    card = {
        "format": "lceval-reference/1",
        "architecture": model.arch.model_dump(),
        "tokenizer": {"kind": tokenizer.name, "file": "tokenizer.json", "vocab_size": tokenizer.vocab_size},
        "recipe": recipe.model_dump(mode="json"),
        "task_versions": {n: t.version for n, t in tasks.items()},
        "training_length": recipe.train_length,
        "train_seconds": round(seconds, 1),
        "device": device,
        "measured": measured,
    }
    save_checkpoint(model, tokenizer, card, out_dir)
    return card


@torch.no_grad()
def evaluate_training_length(model, recipe: TrainRecipe, tokenizer, device) -> dict:
    """Each task's score on fresh samples (a seed no evaluation uses) at the training length.

    One task: ``{task, context_length, samples, accuracy}``; a mixture adds ``per_task``.
    """
    from lceval.scoring import score_batch

    if recipe.eval_samples == 0:
        return {}
    tasks = build_tasks(recipe, recipe.seed + FRESH_SEED_OFFSET)
    length = recipe.train_length
    table = model.position.max_supported_length
    if table is not None:  # a learned table: the prompt, the answer and its stop must fit in it
        length = min(length, table - max(t.max_new_tokens for t in tasks.values()))
    per_task = {}
    for name, task in tasks.items():
        cells = [dict(c, context_length=length) for c in task.cells() if c.get("context_length") == task.cells()[0].get(
            "context_length")]
        per = max(1, recipe.eval_samples // len(cells) // len(tasks))
        by_length = defaultdict(list)
        for c in cells:
            for s in task.cell_samples(c, tokenizer, per):
                by_length[len(s.input_ids)].append(s)
        scores = []
        for group in by_length.values():
            for i in range(0, len(group), 32):
                scores += [r.score for r in score_batch(model, task, group[i : i + 32], tokenizer, device=device)]
        per_task[name] = {"samples": len(scores), "accuracy": round(float(np.mean(scores)), 4)}
    n = sum(v["samples"] for v in per_task.values())
    mean = sum(v["accuracy"] * v["samples"] for v in per_task.values()) / n
    out = {"task": "+".join(per_task), "context_length": length, "samples": n,
           "accuracy": round(mean, 4), "seed": recipe.seed + FRESH_SEED_OFFSET}
    if len(per_task) > 1:
        out["per_task"] = per_task
    return out
