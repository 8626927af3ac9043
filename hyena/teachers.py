"""Teachers: load a pretrained decoder-only transformer and know where its parts are.

One small adapter per architecture family says where the decoder layers are, which attribute of
a layer is the attention, which module produces the embedding output that feeds layer 1, and
how to call one layer on hidden states. Everything else in the project goes through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn


@dataclass(frozen=True)
class TeacherAdapter:
    family: str  # model_type of the HF config
    base_attr: str  # attribute of the *ForCausalLM holding the base model
    embed_attr: str  # attribute of the base model: token embedding
    attn_attr: str  # attribute of a decoder layer: the attention block to replace
    parallel_residual: bool  # documentation: x + attn(ln1 x) + mlp(ln2 x) vs sequential

    def base(self, model: nn.Module) -> nn.Module:
        return getattr(model, self.base_attr)

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return self.base(model).layers

    def embedding(self, model: nn.Module) -> nn.Module:
        return getattr(self.base(model), self.embed_attr)

    def attention(self, layer: nn.Module) -> nn.Module:
        return getattr(layer, self.attn_attr)

    def set_attention(self, layer: nn.Module, module: nn.Module) -> None:
        setattr(layer, self.attn_attr, module)


ADAPTERS: dict[str, TeacherAdapter] = {
    "gpt_neox": TeacherAdapter("gpt_neox", "gpt_neox", "embed_in", "attention", parallel_residual=True),
    "llama": TeacherAdapter("llama", "model", "embed_tokens", "self_attn", parallel_residual=False),
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


def _is_gguf(path: str) -> bool:
    return path.endswith(".gguf")


def _offline_hint(source: str, err: Exception) -> RuntimeError:
    return RuntimeError(
        f"could not load teacher {source!r} from the Hugging Face hub ({type(err).__name__}); "
        "the hub is unreachable or the id is wrong: pass a local directory or a .gguf file path instead"
    )


def load_tokenizer(source: str):
    """Tokenizer for a hub id, a local directory or a local .gguf file."""
    from transformers import AutoTokenizer

    if _is_gguf(source):
        p = Path(source)
        if not p.is_file():
            raise FileNotFoundError(f"teacher GGUF file not found: {source}")
        return AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        if Path(source).exists():
            raise
        raise _offline_hint(source, err) from err


def load_teacher(source: str, dtype: torch.dtype = torch.float32, config_only: bool = False):
    """Load a causal LM teacher (eval mode, no grad) from a hub id, a directory or a .gguf file.

    `config_only=True` builds the architecture from its config with random weights: useful for
    configs whose weights are not available (Pythia-70M offline) and for tests.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    if _is_gguf(source):
        p = Path(source)
        if not p.is_file():
            raise FileNotFoundError(f"teacher GGUF file not found: {source}")
        kwargs = {"gguf_file": p.name}
        source_dir = str(p.parent)
    else:
        kwargs, source_dir = {}, source
    try:
        if config_only:
            config = AutoConfig.from_pretrained(source_dir, **kwargs)
            get_adapter(config)
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(source_dir, dtype=dtype, **kwargs)
    except (OSError, ValueError) as err:
        if Path(source_dir).exists():
            raise
        raise _offline_hint(source, err) from err
    get_adapter(model)
    model.eval().requires_grad_(False)
    return model


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
    """[embedding output, layer 1 output, ..., layer N output], each (B, L, d), via forward hooks.

    `output_hidden_states` is not used: its last entry has the final norm applied.
    """
    adapter = get_adapter(model)
    outputs: list[torch.Tensor] = []

    def grab(_module, _args, out):
        outputs.append((out[0] if isinstance(out, tuple) else out).detach())

    modules = [adapter.embedding(model), *adapter.layers(model)]
    handles = [m.register_forward_hook(grab) for m in modules]
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    finally:
        for hd in handles:
            hd.remove()
    if len(outputs) != len(modules):
        raise RuntimeError(f"captured {len(outputs)} outputs for {len(modules)} hooked modules")
    return outputs
