"""Which attention layers a hybrid student should keep: the cost of each layer's Hyena mixer alone.

For each Hyena layer i of a distilled student, the teacher runs with only layer i's attention
swapped for the student's mixer (every other layer the teacher's), and the next-token loss and the
KL to the unmodified teacher are measured on held-out rows. The layers whose mixer costs most are
the ones a hybrid should keep as attention: their substitution hurts the model most, whatever
their per-layer MSE says (a large error in a direction the rest of the network ignores is cheap).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F

from hyena.teachers import get_adapter


@contextlib.contextmanager
def substituted(teacher, student, layers: Iterable[int]) -> Iterator:
    """The teacher with the student's mixer in place of its attention in `layers` (0-based Hyena
    layers of the student), restored on exit, also after an error."""
    adapter = get_adapter(teacher)
    blocks = adapter.layers(teacher)
    saved = {i: adapter.attention(blocks[i]) for i in layers}
    for i in saved:
        adapter.set_attention(blocks[i], student.mixer(i))
    try:
        yield teacher
    finally:
        for i, attention in saved.items():
            adapter.set_attention(blocks[i], attention)


@torch.no_grad()
def substitution_costs(teacher, student, tokens: torch.Tensor, batch_size: int = 4) -> list[dict]:
    """[{layer (1-based), loss, kl}] for every Hyena layer of `student`, plus the teacher's own
    loss as the reference: `loss` is the mean next-token cross-entropy (nats) with only that layer
    substituted, `kl` the mean KL(teacher || substituted) per token. tokens: (n, L) ids."""
    def run() -> tuple[float, list[torch.Tensor]]:
        total, count, logps = 0.0, 0, []
        for a in range(0, len(tokens), batch_size):
            ids = tokens[a:a + batch_size]
            logits = teacher(input_ids=ids, use_cache=False).logits.float()  # (b, L, V)
            total += F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="sum").item()
            count += ids[:, 1:].numel()
            logps.append(F.log_softmax(logits, dim=-1))
        return total / count, logps

    base_loss, base = run()
    out = [{"layer": 0, "loss": base_loss, "kl": 0.0}]
    for i in student.hyena_layers():
        with substituted(teacher, student, [i]):
            loss, logps = run()
        kl = sum((t.exp() * (t - s)).sum(-1).sum().item() for t, s in zip(base, logps, strict=True))
        out.append({"layer": i + 1, "loss": loss, "kl": kl / sum(t.shape[0] * t.shape[1] for t in base)})
    return out


def layers_to_keep(costs: list[dict], k: int) -> list[int]:
    """The k layers whose substitution costs the most KL, in layer order."""
    ranked = sorted((c for c in costs if c["layer"] > 0), key=lambda c: c["kl"], reverse=True)
    return sorted(c["layer"] for c in ranked[:k])
