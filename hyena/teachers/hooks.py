"""Running a teacher's parts: every layer's output by forward hooks, and one attention alone
(its rotary inputs, causal or sliding-window mask and output)."""

from __future__ import annotations

import torch
import torch.nn as nn

from hyena.core.runtime import first_output
from hyena.teachers.families import get_adapter


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
