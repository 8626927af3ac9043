"""The fused one-token decoder layer (hyena/model/decode_step.py) against the layer's own forward."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_teacher

import hyena.model.modeling
from hyena.model.build import StudentConfig, build_student
from hyena.model.decode_step import fusable
from hyena.model.generation import decode_layout
from hyena.model.operator import HyenaConfig
from hyena.recurrence.modal import ModalFitConfig
from hyena.recurrence.model import RecurrentConfig, to_recurrent


def decode_logits(model, ids: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy decoding by hand with the model's cache: (logits of every step (steps, V), tokens)."""
    cache = model.new_cache()
    logits = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
    out, toks = [logits], []
    for _ in range(steps):
        toks.append(out[-1].argmax(-1, keepdim=True))
        out.append(model(input_ids=toks[-1], cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1])
    return torch.cat(out), torch.cat(toks, dim=1)


@pytest.mark.parametrize("family", ["llama", "qwen3", "mistral", "neox"])
@pytest.mark.parametrize("kind", ["student", "recurrent"])
@torch.no_grad()
def test_fused_layer_step_matches_the_layer_forward(family, kind, monkeypatch):
    teacher = tiny_teacher(family, seed=3)
    model = build_student(teacher, StudentConfig(hyena=HyenaConfig(max_len=128)))
    if kind == "recurrent":
        model, _ = to_recurrent(model, RecurrentConfig(fit_len=128, fit=ModalFitConfig(order=8, steps=0)), progress=False)
    ids = torch.randint(3, 512, (1, 9), generator=torch.Generator().manual_seed(4))
    with decode_layout(model):
        layers = model.decoder_layers()
        assert all(fusable(layer) for layer in layers) == (family != "neox")
        if family != "neox":
            mlp = layers[0].mlp
            assert mlp.gate_proj.weight.untyped_storage().data_ptr() == mlp.packed_gate_up.untyped_storage().data_ptr()
        fused_logits, fused_tokens = decode_logits(model, ids, 12)
        monkeypatch.setattr(hyena.model.modeling, "fusable", lambda layer: False)
        stock_logits, stock_tokens = decode_logits(model, ids, 12)
    assert torch.equal(fused_tokens, stock_tokens)
    torch.testing.assert_close(fused_logits, stock_logits, rtol=1e-5, atol=1e-5)
    assert not any(hasattr(m, "packed_gate_up") for m in model.modules())  # unpacked on exit
    assert all(p.is_contiguous() for p in model.parameters())
