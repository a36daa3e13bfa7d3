"""Local Hugging Face causal LMs, with every lceval attention variant swapped in.

``type: hf`` loads a local directory (config, safetensors weights, tokenizer)
with transformers; nothing is downloaded and pickled weights are never loaded.
The attention variant runs inside the model through transformers' attention
interface: lceval registers one attention function, ``"lceval"``, which
receives q, k, v already position-encoded by the model (its rotary
embeddings, its grouped key/value heads, its KV cache) plus the model's own
scaling, and hands them to the pairing's ``Attention``. The same function
feeds attention capture.

The model's causal structure is what lceval's variants apply themselves
(bottom-right aligned, so cached decoding works); lceval never pads, so the
attention mask transformers would build carries no information and is not
built. Models that carry something else in the mask or the attention call
(ALiBi biases, attention sinks, logit soft-capping) are refused with a
message rather than evaluated wrongly.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch
from torch import Tensor, nn

from lceval.attention import Attention
from lceval.attention.core import by_layer, zero_heads
from lceval.errors import ConfigError, UserError, last_line
from lceval.models.adapters import DTYPES, ModelAdapter, hash_files
from lceval.models.hf_lean import lean_modules, weight_major
from lceval.tokenizer import TextTokenizer

IMPL = "lceval"
PICKLED = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "model.ckpt.index", "flax_model.msgpack")
#: files that hold a tokenizer's vocabulary (tokenizer_config.json alone holds only settings)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
#: model types whose positions are learned absolute embeddings (the table's size is the limit)
LEARNED = {"gpt2": "n_positions", "gpt_neo": "max_position_embeddings", "opt": "max_position_embeddings",
           "biogpt": "max_position_embeddings"}
#: model types that pass something besides q, k, v to their attention, which lceval variants cannot apply
#: (ALiBi models, whose biases travel in the attention mask, are found by ``position_of``)
REFUSED = {"gpt_oss": "attention sinks", "gemma2": "attention logit soft-capping"}


def model_dir(path: Path) -> Path:
    """The Hugging Face directory behind ``path``: itself, or a GGUF file's cached conversion."""
    from lceval.models.gguf import converted_dir, is_gguf

    _no_loop(Path(path))
    return converted_dir(Path(path)) if is_gguf(Path(path)) else Path(path)


def _no_loop(path: Path) -> None:
    """A symlink loop is named as one (a looping path otherwise reads as "missing", the wrong reason)."""
    try:
        path.resolve(strict=True)
    except RuntimeError:  # Python < 3.13 raises RuntimeError("Symlink loop ...")
        raise UserError(f"{path} is a symlink loop; point `path` at the real directory or file") from None
    except OSError as exc:
        if exc.errno == 40:  # ELOOP
            raise UserError(f"{path} is a symlink loop; point `path` at the real directory or file") from None


def read_json(file: Path, fix: str):
    """A JSON file of a model directory, or a one-line error naming it and ``fix`` (how to write it again)."""
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{file} is not valid JSON ({exc}); {fix}") from None


def read_config(path: Path) -> dict:
    path = model_dir(path)
    if not Path(path).is_dir():
        raise UserError(f"no model directory at {path}; `path` must be a local folder saved with save_pretrained "
                        "or a .gguf file")
    file = Path(path) / "config.json"
    _no_loop(file)
    if not file.is_file():
        raise UserError(f"{path} holds no config.json; point `path` at a saved Hugging Face model directory "
                        "(model.save_pretrained(dir) writes one)")
    raw = read_json(file, "rewrite it with model.config.save_pretrained(dir)")
    if not isinstance(raw, dict):
        raise UserError(f"{file} holds a JSON {type(raw).__name__}, not an object; rewrite it with "
                        "model.config.save_pretrained(dir)")
    if not raw.get("model_type"):
        raise UserError(f"{file} has no model_type, so transformers cannot tell which model it is; rewrite it "
                        "with model.config.save_pretrained(dir)")
    return raw


def position_of(config: dict) -> str:
    """The position encoding a checkpoint uses, as lceval reports it."""
    mt = config.get("model_type", "")
    if mt in LEARNED:
        return "learned"
    if mt in ("bloom", "mpt") or config.get("alibi"):
        return "alibi"
    if "rope_theta" in config or "rope_parameters" in config or "rope_scaling" in config or "rotary_dim" in config:
        return "rotary"
    return "unknown"


def inspect_dir(path: Path, trust_remote_code: bool = False) -> dict:
    """A model directory's config.json, once it is known to be supported and loadable (else a one-line error)."""
    path = model_dir(path)
    raw = read_config(path)
    check_supported(raw)
    check_code(path, raw, trust_remote_code)
    check_weights(path)
    check_tokenizer(path)
    return raw


def check_code(path: Path, raw: dict, trust_remote_code: bool) -> None:
    """A model whose class is only in its own code (``auto_map``) needs ``trust_remote_code``: say so."""
    from transformers import CONFIG_MAPPING

    if raw.get("auto_map") and raw["model_type"] not in CONFIG_MAPPING and not trust_remote_code:
        files = sorted(p.name for p in path.glob("*.py")) or ["the files its auto_map names"]
        raise UserError(f"{path} defines its model in its own code ({', '.join(files)}), which runs only with "
                        "trust_remote_code: true; set it if you trust that code, since loading executes it")


def check_weights(path: Path) -> None:
    """Safetensors only: a directory with only pickled weights is refused, never unpickled; each safetensors
    file's header must read (a truncated or foreign file is named here, not deep inside transformers)."""
    from safetensors import SafetensorError, safe_open

    weights = sorted(path.glob("*.safetensors"))
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UserError(f"{index} is not a safetensors index ({type(exc).__name__}); save the model again with "
                            "save_pretrained") from None
        missing = [name for name in shards if not (path / name).is_file()]
        if missing:
            raise UserError(f"{path} lacks {len(missing)} of the {len(shards)} weight shards its index names "
                            f"({', '.join(missing[:3])}); copy the whole directory again")
    for file in weights:
        try:
            with safe_open(file, framework="pt"):
                pass
        except (SafetensorError, OSError) as exc:
            raise UserError(f"{file} is not a readable safetensors file ({exc}); it may be truncated: copy or "
                            "save it again") from None
    if weights:
        return
    pickled = [p.name for p in path.iterdir() if p.name in PICKLED or p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
    if pickled:
        raise UserError(f"{path} holds only pickled weights ({', '.join(sorted(pickled))}); lceval never unpickles "
                        "model files: convert them once where you trust them, with "
                        "model.save_pretrained(dir, safe_serialization=True)")
    raise UserError(f"{path} holds no *.safetensors weights; save the model with save_pretrained")


def check_tokenizer(path: Path) -> None:
    """A tokenizer's own files, not only its settings (tokenizer_config.json alone is no tokenizer)."""
    if not any((path / n).is_file() for n in TOKENIZER_FILES) and not any(path.glob("*.tiktoken")):
        raise UserError(f"{path} holds no tokenizer ({' or '.join(TOKENIZER_FILES)}); save it beside the "
                        "weights with tokenizer.save_pretrained(dir)")
    file = path / "tokenizer.json"
    if file.is_file():
        read_json(file, "save the tokenizer again with tokenizer.save_pretrained(dir)")


def check_supported(config: dict) -> None:
    mt = config.get("model_type", "")
    why = "ALiBi biases in the attention mask" if position_of(config) == "alibi" else REFUSED.get(mt)
    if why:
        raise UserError(f"model type {mt!r} carries {why}, which lceval's attention variants cannot "
                        "apply; evaluating it with them would be silently wrong")


# -- the attention function transformers calls -------------------------------------------------------------------
def lceval_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask, scaling=None,
                     dropout: float = 0.0, **kwargs):
    """transformers' attention-function signature: q (B, H, T, D), k/v (B, H_kv, S, D) -> ((B, T, H, D), None)."""
    config = module.config
    attention: Attention | None = getattr(config, "lceval_attention", None)
    if attention is None:
        raise RuntimeError("the 'lceval' attention implementation was used without an lceval Attention attached")
    for name in ("s_aux", "sinks"):
        if kwargs.get(name) is not None:
            raise UserError(f"this model passes {name} (attention sinks) to its attention; lceval variants cannot "
                            "apply them")
    if kwargs.get("softcap"):
        raise UserError("this model soft-caps attention logits; lceval variants cannot apply that")
    capture = getattr(config, "lceval_capture", None)
    w = None if capture is None else capture.record(getattr(module, "layer_idx", 0), attention, query, key, value,
                                                    scale=scaling)
    out = None if w is None else attention.from_weights(w, value)  # a decoding step's weights, computed once
    if out is None:
        out = attention(query, key, value, causal=True, scale=scaling)
    out = zero_heads(out, getattr(config, "lceval_ablate", {}).get(getattr(module, "layer_idx", 0)))  # (B, H, T, D)
    return out.transpose(1, 2).contiguous(), None


def _no_mask(*args, **kwargs):
    """lceval never pads and its variants apply causality themselves: no mask is built (O(T x S) at long lengths)."""
    return None


def register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(IMPL, lceval_attention)
    AttentionMaskInterface.register(IMPL, _no_mask)


def head_logits(head: nn.Module, x: Tensor) -> Tensor:
    """The output head on x (..., d): for a plain ``nn.Linear`` on the CPU, as ``W @ x^T`` rather than ``x W^T``
    (``lceval.models.hf_lean.weight_major``), at every size.

    A decoding step puts a few rows through a head of the whole vocabulary. For 2-8 rows, MKL runs ``x W^T`` on
    a slow path: on SmolLM2's 49152 x 576 head, 2 threads, it took 17-34 ms against 3-8 ms as ``W @ x^T`` (2-7
    times; one row is 10 ms either way; ``benchmarks/head.py``). The products are the same; the sums are the same
    bits for one row and for 16 rows or more, and round differently in between (about 1e-6 relative), as a row's
    logits already do when the batch around it changes size."""
    if type(head) is not nn.Linear or x.device.type != "cpu":
        return head(x)
    return weight_major(head, x)


class HFModel(nn.Module):
    """The runner's model protocol (``hidden``, ``logits_at``, ``new_cache``, ``capture``) over a transformers LM."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        self.base = lm.base_model
        self.head = lm.get_output_embeddings()
        self.final_softcap = getattr(lm.config, "final_logit_softcapping", None)
        # the keyword the model's forward takes its KV cache by (``cache`` from transformers 5.24 on)
        self.cache_arg = "cache" if "cache" in inspect.signature(self.base.forward).parameters else "past_key_values"

    @property
    def chunked_prefill_exact(self) -> bool:
        """Whether a prompt run in chunks over the cache equals it run whole. Not with RoPE that rescales by the
        length of each call (dynamic NTK, LongRoPE): the prefix's keys would be rotated for a shorter input."""
        config = self.lm.config
        params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
        kind = params.get("rope_type", params.get("type")) if isinstance(params, dict) else None
        return kind not in ("dynamic", "longrope")

    def set_attention(self, attention: Attention) -> None:
        """Route every layer's attention through ``attention`` (read by ``lceval_attention`` from the config)."""
        self.lm.config.lceval_attention = attention

    def set_ablation(self, heads: list[tuple[int, int]]) -> None:
        """Zero these (layer, head) attention outputs, before each layer's output projection."""
        self.lm.config.lceval_ablate = by_layer(heads)

    @property
    def capture(self):
        return getattr(self.lm.config, "lceval_capture", None)

    @capture.setter
    def capture(self, value) -> None:
        self.lm.config.lceval_capture = value

    def new_cache(self):
        from lceval.models.hf_cache import new_cache

        return new_cache(self.lm.config)

    def hidden(self, ids: Tensor, cache=None) -> Tensor:
        out = self.base(input_ids=ids, use_cache=cache is not None, **{self.cache_arg: cache})
        return out.last_hidden_state

    def logits_at(self, hidden: Tensor, index: Tensor) -> Tensor:
        picked = torch.gather(hidden, 1, index[..., None].expand(-1, -1, hidden.shape[-1]))
        logits = head_logits(self.head, picked)
        if self.final_softcap:
            logits = torch.tanh(logits / self.final_softcap) * self.final_softcap
        return logits


def rope_overrides(config, rope) -> None:
    """Apply a pairing model's RoPE override (theta, linear / dynamic / yarn scaling) to a transformers config."""
    if rope is None:
        return
    params = dict(getattr(config, "rope_parameters", None) or {})
    if rope.theta is not None:
        params["rope_theta"] = rope.theta
        if hasattr(config, "rope_theta"):
            config.rope_theta = rope.theta
    if rope.scaling is not None:
        params["rope_type"] = rope.scaling
        params["factor"] = rope.factor
        if rope.scaling in ("yarn", "dynamic", "longrope"):
            params.setdefault("original_max_position_embeddings",
                              rope.original_max_position_embeddings or config.max_position_embeddings)
    config.rope_parameters = params


class HFAdapter(ModelAdapter):
    """``type: hf``: a local transformers causal LM directory (safetensors only)."""

    name = "hf"

    @classmethod
    def check_spec(cls, spec, where: str) -> None:
        """The directory (or GGUF file) loads, its weights and tokenizer are there, a RoPE override fits."""
        try:
            raw = inspect_dir(spec.path, spec.trust_remote_code)
        except UserError as exc:
            raise ConfigError(f"{where}.path", str(exc)) from None
        if spec.rope is not None and position_of(raw) != "rotary":
            raise ConfigError(f"{where}.rope", f"the model at {spec.path} uses {position_of(raw)} positions; "
                              "a RoPE override needs a rotary model")

    @classmethod
    def position_of(cls, spec) -> str | None:
        return position_of(read_config(spec.path))

    def prepare(self) -> None:
        if getattr(self, "lm", None) is not None:
            return
        from transformers import AutoConfig, AutoTokenizer

        from lceval.models.gguf import file_sha256

        spec = self.spec
        self.source = Path(spec.path)
        path = model_dir(self.source)  # a GGUF file's conversion, or the directory itself
        raw = inspect_dir(path, spec.trust_remote_code)
        register()
        try:
            config = AutoConfig.from_pretrained(path, local_files_only=True,
                                                trust_remote_code=spec.trust_remote_code)
            rope_overrides(config, spec.rope)
            self.lm = load_weights(path, config, spec, progress=self.progress)
            hf_tok = AutoTokenizer.from_pretrained(path, local_files_only=True,
                                                   trust_remote_code=spec.trust_remote_code)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError, ImportError) as exc:
            if isinstance(exc, UserError):
                raise
            raise UserError(f"transformers cannot load the model at {path}: {last_line(exc)}") from None
        self.lm.eval().to(self.device)
        lean_modules(self.lm)  # gated MLPs, RMS norms and decoding-size linear layers (lceval.models.hf_lean)
        ends = getattr(getattr(self.lm, "generation_config", None), "eos_token_id", None)
        ends = tuple(ends) if isinstance(ends, list | tuple) else (() if ends is None else (ends,))
        self.tokenizer = TextTokenizer.from_hf(hf_tok, chat_template=spec.chat_template, end_ids=ends)
        cfg = self.lm.config
        self.position = position_of(raw)
        self.n_heads = cfg.num_attention_heads
        self.n_layers = cfg.num_hidden_layers
        table = LEARNED.get(raw.get("model_type", ""))
        self.max_length = getattr(cfg, table) if table else None  # OPT's offset of 2 is transformers' business
        self.path = path
        # a GGUF model is its file: the run identity is the file's hash, not the conversion's
        self.content_hash = file_sha256(self.source)[:16] if path != self.source else weights_hash(path)

    def with_attention(self, attention: Attention) -> nn.Module:
        model = HFModel(self.lm)
        model.set_attention(attention)
        return model

    def describe(self) -> dict:
        cfg = self.lm.config
        source = {"gguf": str(self.source)} if self.source != self.path else {}
        return {"type": self.name, "path": str(self.path), **source, "model_type": cfg.model_type, "position": self.position,
                "rope": getattr(cfg, "rope_parameters", None) if self.position == "rotary" else None,
                "dtype": str(next(self.lm.parameters()).dtype).removeprefix("torch."),
                "max_position_embeddings": getattr(cfg, "max_position_embeddings", None),
                "chat_template": self.spec.chat_template, "sha256": self.content_hash}


#: what transformers may read or execute from a model directory: weights, configs (generation config
#: included), tokenizer files, chat templates and ``trust_remote_code`` modules
HASHED = (".safetensors", ".json", ".model", ".txt", ".jinja", ".py", ".tiktoken")


def weights_hash(path: Path) -> str:
    """sha256 over every file of a directory that transformers may read or execute (the run identity of an
    HF model): editing a remote-code module or a chat template is a different model."""
    return hash_files(f for f in sorted(Path(path).iterdir()) if f.is_file() and f.suffix in HASHED)


def load_weights(path: Path, config, spec, progress: bool = True) -> nn.Module:
    """The model with every weight from the checkpoint: missing, unexpected or reshaped tensors are refused
    (transformers would fill a missing one with random values and only log it), except the tied weights the
    config declares, which transformers ties and never reports. transformers' own load report is silenced:
    its findings are this function's error."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    dtype = "auto" if spec.dtype == "auto" else DTYPES[spec.dtype]
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        lm, info = AutoModelForCausalLM.from_pretrained(
            path, config=config, dtype=dtype, use_safetensors=True, local_files_only=True,
            trust_remote_code=spec.trust_remote_code, attn_implementation=IMPL, output_loading_info=True,
            ignore_mismatched_sizes=True)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    problems = []
    for what, keys in (("missing", info.get("missing_keys")), ("unexpected", info.get("unexpected_keys"))):
        if keys:
            problems.append(f"{what}: {_names(sorted(keys))}")
    mismatched = info.get("mismatched_keys") or []
    if mismatched:
        problems.append("wrong shape: " + _names([f"{k[0]} {tuple(k[1])} where the config needs {tuple(k[2])}"
                                                  if isinstance(k, tuple | list) and len(k) == 3 else str(k)
                                                  for k in mismatched]))
    if problems:
        raise UserError(f"the weights in {path} do not match its config.json ({'; '.join(problems)}); lceval "
                        "never runs a model with weights it did not load: save the model again with save_pretrained")
    return lm


def _names(keys: list[str], most: int = 4) -> str:
    more = f" and {len(keys) - most} more" if len(keys) > most else ""
    return ", ".join(keys[:most]) + more
