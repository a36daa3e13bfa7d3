"""Reference checkpoints: ``model.safetensors`` + ``card.json`` + ``tokenizer.json``.

Weights are safetensors only; nothing is ever unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from lceval.attention import build_attention
from lceval.errors import UserError
from lceval.models.reference import Architecture, ReferenceTransformer
from lceval.tokenizer import TextTokenizer

WEIGHTS, CARD, TOKENIZER = "model.safetensors", "card.json", "tokenizer.json"


def save_checkpoint(model: ReferenceTransformer, tokenizer: TextTokenizer, card: dict, out_dir: Path) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / (WEIGHTS + ".tmp")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp), metadata={"format": "lceval-reference/1"})
    tokenizer.save(out_dir / TOKENIZER)
    (out_dir / CARD).write_text(json.dumps(card, indent=2) + "\n")
    tmp.replace(out_dir / WEIGHTS)  # the weights file appears last: its presence means "complete"


ZOO_PREFIX = "zoo:"


def zoo_path(path: Path | str) -> Path:
    """``zoo:NAME`` -> the shipped checkpoint folder ``lceval/zoo/NAME``; other paths unchanged."""
    text = str(path)
    if not text.startswith(ZOO_PREFIX):
        return Path(path)
    name = text[len(ZOO_PREFIX):]
    folder = Path(__file__).resolve().parents[1] / "zoo"
    shipped = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    if name not in shipped:
        raise UserError(f"no shipped checkpoint {name!r}; the zoo has: {', '.join(shipped) or 'none'}")
    return folder / name


def is_complete(path: Path) -> bool:
    return all((Path(path) / f).exists() for f in (WEIGHTS, CARD, TOKENIZER))


def read_card(path: Path) -> dict:
    """The JSON card of a reference checkpoint directory (a damaged card is a clear error)."""
    card_path = Path(path) / CARD
    try:
        card = json.loads(card_path.read_bytes())
    except ValueError:
        card = None
    if not isinstance(card, dict) or not isinstance(card.get("architecture"), dict) \
            or "position" not in card["architecture"]:
        raise UserError(f"{card_path} is damaged (not a JSON card with an architecture); retrain the checkpoint "
                        f"with `lceval train`, or delete it from the cache to have it retrained")
    return card


def load_checkpoint(path: Path, attention: str = "full", **attention_params):
    """Load a reference model with the given attention variant; returns (model, tokenizer, card)."""
    path = Path(path)
    if not is_complete(path):
        raise UserError(f"{path}: not a reference checkpoint (needs {WEIGHTS}, {CARD}, {TOKENIZER}); "
                        f"train one with `lceval train`")
    card = read_card(path)
    try:
        arch = Architecture(**card["architecture"])
        model = ReferenceTransformer(arch, build_attention(attention, **attention_params))
        model.load_state_dict(load_file(str(path / WEIGHTS)))
        tokenizer = TextTokenizer.load(path / TOKENIZER)
    except UserError:
        raise
    except Exception as exc:  # corrupt or mismatched files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: cannot load the checkpoint ({first[:200]}); retrain it with `lceval train`, "
                        f"or delete it from the cache to have it retrained") from None
    model.eval()
    return model, tokenizer, card
