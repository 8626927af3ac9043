"""Teachers: load a pretrained decoder-only transformer and know where its parts are.

One small adapter per architecture family says where the decoder layers are, which attribute of
a layer is the attention, which modules produce the embedding output that feeds layer 1, and
how to call one layer on hidden states. Everything else in the project goes through it.

Supported families: GPT-NeoX (Pythia), Llama (SmolLM2), Mistral, Qwen2, Qwen3 and GPT-2. Adding
one is an adapter entry in `ADAPTERS` plus, for `student.init: teacher_attention`, a function
in `_PROJECTIONS` that reads its attention's Q/K/V/O at full width.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from hyena.config import Config, param
from hyena.runtime import first_output


@dataclass
class TeacherConfig(Config):
    """params.yaml `teacher`: where the teacher comes from. The `teacher` stage reads it once and
    writes the teacher as a local HF directory that every later stage loads."""

    SECTION = "teacher"

    source: str = param("EleutherAI/pythia-70m", "hub id, local model directory or .gguf file")
    random_init: bool = param(False, "true: the teacher's architecture with seeded random weights (no weights offline)")
    seed: int = param(0, "seed of random_init")


@dataclass(frozen=True)
class TeacherAdapter:
    family: str  # model_type of the HF config
    base_attr: str  # attribute of the *ForCausalLM holding the base model
    embed_attr: str  # attribute of the base model: token embedding
    attn_attr: str  # attribute of a decoder layer: the attention block to replace
    norm_attr: str = "input_layernorm"  # attribute of a decoder layer: the norm in front of the attention
    layers_attr: str = "layers"  # attribute of the base model: the decoder layers
    cache_kwarg: str = "cache"  # name under which a decoder layer hands the cache to its attention
    position_attr: str | None = None  # attribute of the base model: learned absolute position embeddings
    dropout_attr: str | None = None  # attribute of the base model: dropout on the embedding output
    final_norm_attr: str = "norm"  # attribute of the base model: the norm after the last decoder layer

    def base(self, model: nn.Module) -> nn.Module:
        return getattr(model, self.base_attr)

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return getattr(self.base(model), self.layers_attr)

    def input_norm(self, layer: nn.Module) -> nn.Module:
        return getattr(layer, self.norm_attr)

    def embedding(self, model: nn.Module) -> nn.Module:
        return getattr(self.base(model), self.embed_attr)

    def final_norm(self, model: nn.Module) -> nn.Module:
        return getattr(self.base(model), self.final_norm_attr)

    def attention(self, layer: nn.Module) -> nn.Module:
        return getattr(layer, self.attn_attr)

    def set_attention(self, layer: nn.Module, module: nn.Module) -> None:
        setattr(layer, self.attn_attr, module)

    def embed(self, model: nn.Module, input_ids: torch.Tensor, start: int = 0,
              positions: torch.Tensor | None = None) -> torch.Tensor:
        """What decoder layer 1 receives for input_ids (B, L) -> (B, L, d): the token embedding,
        plus the learned position embeddings of positions start..start+L-1 where the family has
        them, through the embedding dropout (active in training mode only, as in the model)."""
        base = self.base(model)
        h = self.embedding(model)(input_ids)  # (B, L, d)
        if self.position_attr is not None:
            if positions is None:  # else (B, L) per-row positions (left-padded batches)
                positions = torch.arange(start, start + input_ids.shape[1], device=input_ids.device)[None]  # (1, L)
            h = h + getattr(base, self.position_attr)(positions)
        dropout = getattr(base, self.dropout_attr) if self.dropout_attr is not None else None
        return dropout(h) if dropout is not None else h


def _llama_like(family: str) -> TeacherAdapter:
    """Llama's layout (model.layers[i].self_attn, input_layernorm, embed_tokens, rotary positions),
    shared by Mistral, Qwen2 and Qwen3."""
    return TeacherAdapter(family, "model", "embed_tokens", "self_attn")


ADAPTERS: dict[str, TeacherAdapter] = {
    "gpt_neox": TeacherAdapter("gpt_neox", "gpt_neox", "embed_in", "attention", cache_kwarg="layer_past",
                               dropout_attr="emb_dropout", final_norm_attr="final_layer_norm"),
    "llama": _llama_like("llama"),
    "mistral": _llama_like("mistral"),
    "qwen2": _llama_like("qwen2"),
    "qwen3": _llama_like("qwen3"),
    # GPT-2: transformer.h[i].attn behind ln_1; learned absolute positions (wpe), which the
    # student keeps: they are part of layer 1's input, not of the attention
    "gpt2": TeacherAdapter("gpt2", "transformer", "wte", "attn", norm_attr="ln_1", layers_attr="h",
                           position_attr="wpe", dropout_attr="drop", final_norm_attr="ln_f"),
}


def get_adapter(model_or_config) -> TeacherAdapter:
    """The adapter for a model or config; a clear error for unsupported architectures."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type not in ADAPTERS:
        raise ValueError(
            f"unsupported teacher architecture {model_type!r}; supported: {', '.join(sorted(ADAPTERS))} "
            "(add a TeacherAdapter in hyena/teachers.py for another family)"
        )
    return ADAPTERS[model_type]


@dataclass
class AttentionProjections:
    """An attention block's projections at full model width: q, k, v: (d, d) weights with (d,)
    biases (None when absent), mapping the normed input to per-head queries/keys/values laid
    out head after head; o: the output projection (d, d). Keys and values of grouped-query
    attention are repeated per group exactly as attention broadcasts them."""

    q_weight: torch.Tensor
    k_weight: torch.Tensor
    v_weight: torch.Tensor
    o_weight: torch.Tensor
    q_bias: torch.Tensor | None = None
    k_bias: torch.Tensor | None = None
    v_bias: torch.Tensor | None = None
    o_bias: torch.Tensor | None = None


def _bias(linear: nn.Linear) -> torch.Tensor | None:
    return None if linear.bias is None else linear.bias.detach()


def _neox_projections(attn: nn.Module, config) -> AttentionProjections:
    """GPT-NeoX fuses Q/K/V into one Linear whose output rows are interleaved per head:
    [q_h0 | k_h0 | v_h0 | q_h1 | k_h1 | v_h1 | ...] (the forward views them as (heads, 3*hs) and
    chunks the last axis). De-interleave: rows (heads, 3, hs) -> pick slot 0/1/2."""
    heads = config.num_attention_heads
    d = config.hidden_size
    hs = d // heads
    w = attn.query_key_value.weight.detach().view(heads, 3, hs, -1)  # (heads, 3, hs, d_in)
    b = attn.query_key_value.bias
    b = None if b is None else b.detach().view(heads, 3, hs)
    part = [w[:, j].reshape(heads * hs, -1) for j in range(3)]
    bias = [None if b is None else b[:, j].reshape(heads * hs) for j in range(3)]
    return AttentionProjections(*part, attn.dense.weight.detach(), *bias, _bias(attn.dense))


def _llama_projections(attn: nn.Module, config) -> AttentionProjections:
    """Llama: separate q/k/v/o. With grouped-query attention, kv head j serves query heads
    j*g .. j*g+g-1 (`repeat_kv`), so K/V rows are repeated per head with repeat_interleave."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    if heads * head_dim != config.hidden_size:
        raise ValueError(
            f"teacher attention width {heads}x{head_dim} != hidden_size {config.hidden_size}: "
            "its Q/K/V cannot seed a Hyena of the model width; use init=random"
        )
    groups = heads // kv_heads

    def widen(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None:
            return None
        t = t.detach()
        return t.view(kv_heads, head_dim, *t.shape[1:]).repeat_interleave(groups, dim=0).reshape(
            heads * head_dim, *t.shape[1:]
        )

    return AttentionProjections(
        attn.q_proj.weight.detach(), widen(attn.k_proj.weight), widen(attn.v_proj.weight),
        attn.o_proj.weight.detach(), _bias(attn.q_proj), widen(attn.k_proj.bias),
        widen(attn.v_proj.bias), _bias(attn.o_proj),
    )


def _qwen3_projections(attn: nn.Module, config) -> AttentionProjections:
    """Qwen3: Llama's projections, then a per-head RMSNorm on queries and keys (q_norm, k_norm:
    gamma * x / rms(x) over each head's dims). Its scale gamma is linear and is folded into the
    Q/K rows (and biases); the division by the per-head RMS is not linear and is left out, so the
    seeded gates point along the teacher's normalised queries/keys, each head scaled by its RMS."""
    p = _llama_projections(attn, config)
    heads = config.num_attention_heads

    def fold(t: torch.Tensor | None, gamma: torch.Tensor) -> torch.Tensor | None:
        if t is None:
            return None
        scale = gamma.detach().repeat(heads)  # (heads * head_dim,): the same gamma for every head
        return t * scale.view(-1, *([1] * (t.ndim - 1)))

    return AttentionProjections(
        fold(p.q_weight, attn.q_norm.weight), fold(p.k_weight, attn.k_norm.weight), p.v_weight, p.o_weight,
        fold(p.q_bias, attn.q_norm.weight), fold(p.k_bias, attn.k_norm.weight), p.v_bias, p.o_bias,
    )


def _gpt2_projections(attn: nn.Module, config) -> AttentionProjections:
    """GPT-2: Q/K/V fused in one Conv1D `c_attn` whose weight is (d_in, 3d), i.e. y = x @ W + b:
    the transpose of a Linear weight. Its output splits into [Q | K | V] blocks of d columns
    (heads laid out one after another inside each); `c_proj` is a Conv1D too."""
    d = config.hidden_size
    w = attn.c_attn.weight.detach().T  # (3d, d_in), Linear layout
    b = attn.c_attn.bias.detach()
    q, k, v = (w[j * d : (j + 1) * d] for j in range(3))
    qb, kb, vb = (b[j * d : (j + 1) * d] for j in range(3))
    return AttentionProjections(q, k, v, attn.c_proj.weight.detach().T, qb, kb, vb, attn.c_proj.bias.detach())


_PROJECTIONS = {
    "gpt_neox": _neox_projections,
    "llama": _llama_projections,
    "mistral": _llama_projections,
    "qwen2": _llama_projections,  # Llama's, with Q/K/V biases
    "qwen3": _qwen3_projections,
    "gpt2": _gpt2_projections,
}


def attention_projections(attention: nn.Module, config) -> AttentionProjections:
    """The Q/K/V/O projections of one teacher attention block, at full width (see the class)."""
    return _PROJECTIONS[get_adapter(config).family](attention, config)


def _is_gguf(path: str) -> bool:
    return path.endswith(".gguf")


GGUF_FIX = "re-download it, or point teacher.source at a complete .gguf file or a model directory"


def read_gguf(source: str | Path, fix: str = GGUF_FIX):
    """The `gguf` reader of a .gguf file, after checking its header and tensor table parse and
    every tensor's data lies inside the file (memory-mapped: nothing is decoded, a few seconds).

    A truncated download or a file that is not a GGUF is one line naming the file and `fix`,
    instead of a reshape or struct error from deep inside the loader."""
    import struct

    from gguf import GGUFReader

    from hyena.io import CorruptInputError

    p = Path(source).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"GGUF file not found: {source} ({fix})")
    size = p.stat().st_size
    try:
        reader = GGUFReader(str(p))
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    except (ValueError, struct.error, IndexError, KeyError, EOFError, OverflowError, TypeError) as err:
        raise CorruptInputError(f"{source} is truncated or not a GGUF file ({type(err).__name__}): {fix}") from None
    if not reader.tensors or end > size:
        raise CorruptInputError(f"{source} is truncated or not a GGUF file (tensor data needs {end} bytes, "
                                f"the file has {size}): {fix}")
    return reader


def _looks_like_path(source: str) -> bool:
    """Hub ids are "name" or "org/name"; anything else (absolute, ./, ../, ~, deeper) is a path."""
    return source.startswith(("/", ".", "~")) or source.count("/") > 1 or "\\" in source


def _split_source(source: str) -> tuple[str, dict]:
    """(directory or hub id, extra kwargs for from_pretrained) for a hub id, directory or .gguf."""
    if _is_gguf(source):
        p = Path(source).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"teacher GGUF file not found: {source} (fix the teacher path)")
        return str(p.parent), {"gguf_file": p.name}
    if _looks_like_path(source) and not Path(source).expanduser().exists():
        raise FileNotFoundError(f"teacher directory not found: {source} (fix the teacher path)")
    return source, {}


def _offline_hint(source: str, err: Exception) -> RuntimeError:
    return RuntimeError(
        f"could not load teacher {source!r} from the Hugging Face hub ({type(err).__name__}); "
        "the hub is unreachable or the id is wrong: pass a local directory or a .gguf file path instead"
    )


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "tokenizer.model", "chat_template.jinja")


def has_tokenizer(directory: str | Path) -> bool:
    """Whether a model directory holds a tokenizer (transformers would build an EMPTY one otherwise)."""
    return any((Path(directory) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model"))


def copy_tokenizer(src: str | Path, dst: str | Path) -> None:
    """Copy the tokenizer files of model directory `src` into `dst` (a student stays self-contained)."""
    import shutil

    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            shutil.copy2(Path(src) / name, Path(dst) / name)


def load_tokenizer(source: str):
    """Tokenizer for a hub id, a local directory or a local .gguf file."""
    from transformers import AutoTokenizer

    where, kwargs = _split_source(source)
    try:
        return AutoTokenizer.from_pretrained(where, **kwargs)
    except (OSError, ValueError) as err:
        if Path(where).exists():
            raise
        raise _offline_hint(source, err) from err


def load_teacher(source: str, dtype: torch.dtype = torch.float32, config_only: bool = False, seed: int = 0):
    """Load a causal LM teacher (eval mode, no grad) from a hub id, a directory or a .gguf file.

    The architecture is checked against the supported adapters from the config, before any
    weights are fetched. `config_only=True` builds the architecture with weights drawn from
    `seed`: for configs whose weights are not available (Pythia-70M offline) and for tests.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    where, kwargs = _split_source(source)
    if kwargs:
        read_gguf(source)  # a truncated file: one line, not a reshape error from the loader
    try:
        # a GGUF's config costs as much as its weights (~15 s), so check it after loading
        config = None if (kwargs and not config_only) else AutoConfig.from_pretrained(where, **kwargs)
        if config is not None:
            get_adapter(config)
        if config_only:
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **kwargs)
    except (OSError, ValueError) as err:
        if Path(where).is_dir() and not kwargs and "no file named" in str(err):
            raise FileNotFoundError(
                f"teacher directory {where} has a config but no weights: set teacher.random_init: true to use "
                "random weights of that architecture, or give a directory with model.safetensors") from None
        if Path(where).exists() or str(err).startswith("unsupported teacher architecture"):
            raise
        raise _offline_hint(source, err) from err
    get_adapter(model)
    model.eval().requires_grad_(False)
    return model


PROVENANCE = "teacher.json"


def save_teacher(cfg: TeacherConfig, out: Path) -> dict:
    """Write the teacher of `cfg` as a plain HF directory (fp32 safetensors, config, tokenizer) plus
    `teacher.json` (source, random_init, seed, family, weights hash) into `out`, an empty directory.

    Later stages load this directory (`load_teacher(out)`): a local copy loads in a second where a
    GGUF dequantises for ~20 s, and every stage sees exactly the same weights."""
    model = load_teacher(cfg.source, config_only=cfg.random_init, seed=cfg.seed)
    tokenizer = load_tokenizer(cfg.source)
    # a GGUF teacher is dequantised to plain fp32 on load: its quantiser describes the file, not these weights
    model.hf_quantizer = None
    model.config.__dict__.pop("quantization_config", None)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    record = {"source": cfg.source, "random_init": cfg.random_init, "seed": cfg.seed,
              "family": get_adapter(model).family, "n_layers": len(get_adapter(model).layers(model)),
              "weights_hash": weights_hash(model)}
    (Path(out) / PROVENANCE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


def teacher_record(path: str | Path) -> dict:
    """The provenance `save_teacher` wrote next to a materialised teacher ({} for other sources)."""
    p = Path(path) / PROVENANCE
    return json.loads(p.read_text()) if p.is_file() else {}


def teacher_max_positions(source: str) -> int | None:
    """The teacher's maximum positions from its config (GGUF metadata read directly: fast)."""
    if source.endswith(".gguf"):
        where, _ = _split_source(source)  # a missing file: one line
        reader = read_gguf(source)

        def field(key):
            f = reader.fields.get(key)
            return None if f is None else f.contents()

        arch = field("general.architecture")
        value = field(f"{arch}.context_length") if arch else None
        return int(value) if value is not None else None
    from transformers import AutoConfig

    where, kwargs = _split_source(source)
    try:
        config = AutoConfig.from_pretrained(where, **kwargs)
    except (OSError, ValueError) as err:
        if Path(where).exists():
            raise
        raise _offline_hint(source, err) from err
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    return None


def teacher_depth(source: str, materialised: str | Path | None = None) -> int | None:
    """The teacher's number of decoder layers, read from its config alone (a GGUF's metadata, a local
    directory's config.json, or the materialised teacher made from `source`); None when only a hub
    download could tell. Cheap: no weights are loaded."""
    if _is_gguf(source):
        if not Path(source).expanduser().is_file():
            return None
        reader = read_gguf(source)
        arch = reader.fields.get("general.architecture")
        count = reader.fields.get(f"{arch.contents()}.block_count") if arch is not None else None
        return int(count.contents()) if count is not None else None
    candidates = [Path(source).expanduser() / "config.json"]
    if materialised is not None and teacher_record(materialised).get("source") == source:
        candidates.append(Path(materialised) / "config.json")
    for config in candidates:
        try:
            raw = json.loads(config.read_text())
        except (OSError, ValueError):
            continue
        raw = raw.get("text_config", raw) if isinstance(raw, dict) else {}
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if isinstance(raw.get(key), int):
                return raw[key]
    return None


def weights_hash(model: nn.Module, max_bytes_per_tensor: int = 1 << 16) -> str:
    """A cheap content hash of a model's weights (names, shapes and a prefix of every tensor)."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        flat = t.detach().reshape(-1).to(torch.float32).cpu().numpy().tobytes()
        h.update(flat[:max_bytes_per_tensor])
    return h.hexdigest()[:16]


@torch.no_grad()
def capture_layer_outputs(model: nn.Module, input_ids: torch.Tensor, attention_mask=None) -> list[torch.Tensor]:
    """[input of layer 1, layer 1 output, ..., layer N output], each (B, L, d), via hooks.

    Entry 0 is what the first decoder layer receives: the token embedding, plus learned position
    embeddings where the family has them. `output_hidden_states` is not used: its last entry has
    the final norm applied.
    """
    return capture(model, input_ids, attention_mask)[0]


@torch.no_grad()
def capture(model: nn.Module, input_ids: torch.Tensor, attention_mask=None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(capture_layer_outputs, the logits (B, L, V)) from one forward pass."""
    layers = get_adapter(model).layers(model)
    outputs: list[torch.Tensor] = []

    def grab_input(_module, args, kwargs):
        outputs.append((args[0] if args else kwargs["hidden_states"]).detach())

    def grab(_module, _args, out):
        outputs.append(first_output(out).detach())

    handles = [layers[0].register_forward_pre_hook(grab_input, with_kwargs=True)]
    handles += [m.register_forward_hook(grab) for m in layers]
    try:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    finally:
        for hd in handles:
            hd.remove()
    if len(outputs) != len(layers) + 1:
        raise RuntimeError(f"captured {len(outputs)} outputs for {len(layers) + 1} hooked points")
    return outputs, logits


def position_inputs(model: nn.Module, hidden_states: torch.Tensor) -> dict:
    """What a decoder layer or attention of `model` needs besides the hidden states (B, L, d) to run
    alone on positions 0..L-1: the rotary (cos, sin) where the family has them; {} otherwise."""
    rotary = getattr(get_adapter(model).base(model), "rotary_emb", None)
    if rotary is None:
        return {}
    B, L = hidden_states.shape[:2]
    positions = torch.arange(L, device=hidden_states.device)[None].expand(B, L)
    return {"position_embeddings": rotary(hidden_states, position_ids=positions)}


def sliding_window(model: nn.Module, attention: nn.Module) -> int | None:
    """How many positions (itself included) a query of this attention sees, None for all. Qwen2/3
    set it per layer on the attention (None on full-attention layers); Mistral in its config."""
    if hasattr(attention, "sliding_window"):
        return attention.sliding_window
    return getattr(model.config, "sliding_window", None)


def causal_mask(model: nn.Module, hidden_states: torch.Tensor, window: int | None = None) -> torch.Tensor | None:
    """None where the attention implementation is causal by itself (sdpa, flash) and no sliding
    window shorter than the sequence applies; otherwise an additive (1, 1, L, L) mask: query t
    sees keys t-window+1 .. t (all keys <= t without a window)."""
    L = hidden_states.shape[1]
    banded = window is not None and window < L
    if getattr(model.config, "_attn_implementation", "sdpa") != "eager" and not banded:
        return None
    q = torch.arange(L, device=hidden_states.device)[:, None]  # (L, 1)
    k = torch.arange(L, device=hidden_states.device)[None, :]  # (1, L)
    hidden = (k > q) | (k <= q - window) if banded else k > q  # (L, L)
    mask = torch.zeros((L, L), device=hidden_states.device, dtype=hidden_states.dtype)
    return mask.masked_fill(hidden, float("-inf"))[None, None]


def attention_output(model: nn.Module, i: int, x: torch.Tensor) -> torch.Tensor:
    """What the attention of decoder layer i (0-based) adds to the residual stream for the layer's
    input x (B, L, d): attention(norm(x)), output projection included. The target of attention
    transfer (`distill.target: mixer_output`)."""
    adapter = get_adapter(model)
    layer = adapter.layers(model)[i]
    attention = adapter.attention(layer)
    h = adapter.input_norm(layer)(x)
    mask = causal_mask(model, h, sliding_window(model, attention))
    out = attention(hidden_states=h, attention_mask=mask, **position_inputs(model, h))
    return first_output(out)
