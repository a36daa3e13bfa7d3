"""Teacher-forced scoring equals greedy decoding's exact match."""

from __future__ import annotations

import torch

from lceval.attention import build_attention
from lceval.models.checkpoint import load_checkpoint
from lceval.models.reference import Architecture, ReferenceTransformer
from lceval.scoring import greedy_decode, score_batch
from lceval.task import Sample


def tiny_model(seed=0) -> ReferenceTransformer:
    torch.manual_seed(seed)
    arch = Architecture(vocab_size=40, d_model=32, n_layers=2, n_heads=2, position="rotary")
    return ReferenceTransformer(arch, build_attention("full")).eval()


def test_teacher_forcing_matches_greedy_multi_token():
    model = tiny_model()
    g = torch.Generator().manual_seed(1)
    samples, expected = [], []
    for i in range(24):
        prompt = torch.randint(0, 40, (20,), generator=g).tolist()
        greedy = greedy_decode(model, prompt, 3)
        answer = list(greedy)
        if i % 3 == 1:
            answer[-1] = (answer[-1] + 1) % 40  # only the last token wrong
        elif i % 3 == 2:
            answer[0] = (answer[0] + 1) % 40  # first wrong: later tokens are teacher-forced
        samples.append(Sample(id=str(i), input_ids=prompt, answer_ids=answer))
        expected.append(greedy == answer)
    scores = score_batch(model, samples)
    assert [s.correct for s in scores] == expected
    assert sum(expected) == 8
    # log-probability equals the sum over answer positions of a full forward's log-softmax
    for s, sc in zip(samples, scores, strict=True):
        ids = torch.tensor([s.input_ids + s.answer_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids)[0], -1)
        want = sum(float(logp[len(s.input_ids) - 1 + j, t]) for j, t in enumerate(s.answer_ids))
        assert abs(sc.answer_logprob - want) < 1e-4


def test_trained_model_scoring_equals_greedy(quickstart_rotary):
    from lceval.tasks.niah import NeedleInAHaystack, NiahConfig

    model, tok, _ = load_checkpoint(quickstart_rotary)
    task = NeedleInAHaystack(NiahConfig(lengths=[200], depths=[0.0, 0.5, 1.0], samples=6), seed=5)
    samples = task.samples(tok)
    scores = score_batch(model, samples)
    for s, sc in zip(samples, scores, strict=True):
        assert sc.correct == (greedy_decode(model, s.input_ids, len(s.answer_ids)) == s.answer_ids)


def test_training_is_deterministic_from_its_seed(tmp_path):
    from safetensors.torch import load_file

    from lceval.config import TrainRecipe
    from lceval.train import train

    recipe = TrainRecipe(d_model=16, n_layers=1, steps=5, batch_size=4, eval_samples=8, seed=7)
    cards = [train(recipe, tmp_path / name, progress=False) for name in ("a", "b")]
    wa, wb = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert cards[0]["measured"] == cards[1]["measured"]
    other = train(recipe.model_copy(update={"seed": 8}), tmp_path / "c", progress=False)
    assert other is not None
    wc = load_file(str(tmp_path / "c" / "model.safetensors"))
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
