"""Building a student from a teacher: params.yaml `student` (`StudentConfig`), the teacher's
non-attention weights copied in, each mixer optionally seeded from its attention block, and the
parameter report. The model itself is `hyena.model.modeling`.

`build_student(teacher, cfg)` copies every non-attention weight from the teacher. With
`init: teacher_attention` the Hyena projections start from the attention's (see
`init_mixer_from_attention` for the mapping).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn

from hyena.core.config import Config, param
from hyena.model import multihyena
from hyena.model.modeling import INITS, HyenaMixer, HyenaStudentForCausalLM, HyenaStudentHFConfig
from hyena.model.multihyena import teacher_heads
from hyena.model.operator import HyenaConfig
from hyena.teachers import TeacherAdapter, attention_projections, get_adapter


@dataclass
class StudentConfig(Config):
    """params.yaml `student`: how the student is built from the teacher."""

    SECTION = "student"

    init: Literal["random", "teacher_attention"] = param(
        "random", "random (the paper) | teacher_attention (teacher's Q/K/V/O -> Hyena projections)")
    out_scale: float = param(1.0, "multiplies each mixer's output projection at initialisation (0: an "
                                  "untrained mixer adds nothing to the residual stream)", ge=0)
    keep_attention: list[int] = param([], "decoder layers (1-based) that keep the teacher's attention: a hybrid "
                                          "student ([]: every attention becomes Hyena, the paper)")
    seed: int = param(0, "seed of the Hyena weights' initialisation")
    mixer: Literal["hyena", "multihyena"] = param(
        "hyena", "hyena: the paper's operator, one filter per channel | multihyena: Laughing Hyena's, one filter per head "
                 "over q.k v (linear attention with a learned decay kernel; hyena/model/multihyena.py)")
    heads: int = param(0, "MultiHyena query heads (0: the teacher's attention heads; init teacher_attention needs 0)", ge=0)
    kv_heads: int = param(0, "MultiHyena key/value heads, each shared by heads/kv_heads query heads (0: the teacher's "
                             "when heads is 0, else heads)", ge=0)
    hyena: HyenaConfig = param(HyenaConfig(), "HyenaConfig (hyena/model/operator.py)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if any(k < 1 for k in self.keep_attention) or len(set(self.keep_attention)) != len(self.keep_attention):
            raise ValueError(f"student.keep_attention must list distinct layer numbers >= 1, got {self.keep_attention}")
        if self.mixer == "hyena" and (self.heads or self.kv_heads):
            raise ValueError("student.heads / kv_heads apply to mixer: multihyena only (the Hyena mixer has no heads)")

    def head_layout(self, teacher_config) -> tuple[int | None, int | None]:
        """(heads, kv_heads) of a MultiHyena student of this teacher, checked against its width
        (one-line error); (None, None) for the Hyena mixer."""
        if self.mixer != "multihyena":
            return None, None
        heads, kv_heads = teacher_heads(teacher_config)
        if self.heads and self.heads != heads:
            heads, kv_heads = self.heads, self.kv_heads or self.heads
        elif self.kv_heads:
            kv_heads = self.kv_heads
        multihyena.head_layout(teacher_config.hidden_size, heads, kv_heads)
        return heads, kv_heads


def _mixer_prefixes(model: nn.Module, adapter: TeacherAdapter, layers: list[int]) -> list[str]:
    """State-dict prefixes ("gpt_neox.layers.3.attention.") of the attention blocks of `layers`."""
    blocks = {id(adapter.attention(adapter.layers(model)[i])) for i in layers}
    return [f"{name}." for name, m in model.named_modules() if id(m) in blocks]


def copy_teacher_weights(teacher: nn.Module, student: HyenaStudentForCausalLM) -> list[str]:
    """Copy every teacher weight the student shares (embeddings, norms, MLPs, the unembedding,
    and the attention of layers the student keeps); returns the copied keys.

    Raises if the two state dicts disagree anywhere outside the Hyena mixers, so a key that
    silently failed to copy (or got copied where it should not) cannot go unnoticed.
    """
    hyena = student.hyena_layers()
    replaced = tuple(_mixer_prefixes(teacher, get_adapter(teacher), hyena))
    mixers = tuple(_mixer_prefixes(student.backbone, student.adapter, hyena))
    keep = {k: v for k, v in teacher.state_dict().items() if not k.startswith(replaced)}
    result = student.backbone.load_state_dict(keep, strict=False)
    stray = [k for k in result.missing_keys if not k.startswith(mixers)]
    if result.unexpected_keys or stray:
        raise RuntimeError(
            f"teacher and student weights do not line up: unexpected {result.unexpected_keys[:5]}, "
            f"missing {stray[:5]}"
        )
    return sorted(keep)


@torch.no_grad()
def init_mixer_from_attention(mixer: HyenaMixer, attention: nn.Module, teacher_config) -> None:
    """Seed a Hyena mixer with a teacher attention block's weights.

    Hyena (order N) computes y = W_out(x_0 * h_1 * (x_1 * ... h_{N-1} * (x_{N-1} * v))); attention
    computes y = W_O softmax(q k^T) v. The mapping gives each projection the same role:

        x_0     <- Q   (outer gate: "which output to read", like the query)
        x_{N-1} <- K   (inner gate applied to v before the first long conv, like the key)
        v       <- V
        W_out   <- O
        x_1..x_{N-2}  (order >= 3 only) keep their random init

    Biases are copied where the teacher has them and zeroed otherwise. The short depthwise conv
    is set to the identity (weight 1 on the current tap, bias 0), so that at initialisation the
    gates ARE the teacher's q, k, v. The implicit long filter keeps its random Hyena init.
    GQA keys/values are repeated per query head; GPT-NeoX's fused QKV is de-interleaved.
    """
    p = attention_projections(attention, teacher_config)
    d, order = mixer.d_model, mixer.cfg.order
    if p.q_weight.shape != (d, d):
        raise ValueError(f"teacher attention maps to {tuple(p.q_weight.shape)}, Hyena needs ({d}, {d})")
    blocks = {0: (p.q_weight, p.q_bias), order - 1: (p.k_weight, p.k_bias), order: (p.v_weight, p.v_bias)}
    w, b = mixer.in_proj.weight, mixer.in_proj.bias  # ((N+1) d, d), ((N+1) d,)
    for block, (weight, bias) in blocks.items():
        rows = slice(block * d, (block + 1) * d)
        w[rows].copy_(weight)
        b[rows].copy_(bias) if bias is not None else b[rows].zero_()
    mixer.out_proj.weight.copy_(p.o_weight)
    mixer.out_proj.bias.copy_(p.o_bias) if p.o_bias is not None else mixer.out_proj.bias.zero_()
    # Conv1d(padding=k-1) keeps the first L outputs: output t reads inputs t-k+1..t, so the LAST
    # tap multiplies the current input
    mixer.short_filter.weight.zero_()
    mixer.short_filter.weight[..., -1] = 1.0
    mixer.short_filter.bias.zero_()


def build_student(teacher: nn.Module, cfg: StudentConfig | None = None, teacher_source: str = "") -> HyenaStudentForCausalLM:
    """The teacher with every attention replaced by a Hyena mixer of the teacher's width (or a
    MultiHyena mixer with the teacher's heads, `cfg.mixer`).

    Every non-attention weight (embeddings, norms, MLPs, unembedding) is copied from the teacher;
    tied embeddings stay tied. `init="random"` keeps the Hyena reference initialisation drawn from
    `cfg.seed` (the paper); `init="teacher_attention"` seeds each mixer from its attention block
    (`init_mixer_from_attention`; MultiHyena: `hyena.model.multihyena.init_from_attention`). The student has the teacher's dtype and is returned in eval mode.

    `cfg.hyena.max_len` is used as given: it is the longest sequence the student accepts AND the
    time scale of the implicit filters (t = n / (max_len-1)), so set it to the longest context
    the student will ever see (training and evaluation), e.g. 8192 for long-context evals.
    """
    cfg = cfg or StudentConfig()
    init, hyena_cfg = cfg.init, cfg.hyena
    if init not in INITS:
        raise ValueError(f"student init must be one of {', '.join(INITS)} (got {init!r})")
    torch.manual_seed(cfg.seed)
    adapter = get_adapter(teacher)
    heads, kv_heads = cfg.head_layout(teacher.config)
    teacher_config = teacher.config.to_dict()
    # a GGUF teacher's quantization_config describes its file, not the architecture
    teacher_config.pop("quantization_config", None)
    config = HyenaStudentHFConfig(
        teacher_config=teacher_config,
        teacher_source=teacher_source or str(getattr(teacher.config, "_name_or_path", "") or ""),
        hyena=hyena_cfg.to_dict(),
        init=init,
        keep_attention=list(cfg.keep_attention),
        mixer=cfg.mixer,
        heads=heads,
        kv_heads=kv_heads,
    )
    dtype = next(teacher.parameters()).dtype
    student = HyenaStudentForCausalLM(config).to(dtype)
    copy_teacher_weights(teacher, student)
    for i in student.hyena_layers():
        mixer = student.mixer(i)
        if init == "teacher_attention":
            seed = multihyena.init_from_attention if cfg.mixer == "multihyena" else init_mixer_from_attention
            seed(mixer, adapter.attention(adapter.layers(teacher)[i]), teacher.config)
        if cfg.out_scale != 1.0:
            with torch.no_grad():
                mixer.out_proj.weight.mul_(cfg.out_scale)
                mixer.out_proj.bias.mul_(cfg.out_scale)
    return student.eval()


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())  # parameters() skips tied duplicates


def parameter_report(teacher: nn.Module, student: HyenaStudentForCausalLM) -> dict:
    """Parameter counts (unique tensors, tied embeddings counted once).

    Keys: mixer ("hyena" | "multihyena"), teacher_total, student_total, per_attention (one teacher
    attention block), per_mixer (one mixer), per_mixer_filter (its implicit filter FFN + pass-through
    bias; MultiHyena: one output channel per head instead of per model channel),
    n_layers, hyena_layers and kept_attention_layers (a hybrid's split), shared (everything but
    the attention/mixers, identical in both)."""
    adapter = get_adapter(teacher)
    layers = adapter.layers(teacher)
    per_attention = _count(adapter.attention(layers[0]))
    hyena = student.hyena_layers()
    mixer = student.mixer(hyena[0]) if hyena else None
    report = {
        "mixer": student.config.mixer,
        "teacher_total": _count(teacher),
        "student_total": _count(student),
        "per_attention": per_attention,
        "per_mixer": _count(mixer) if mixer is not None else 0,
        "per_mixer_filter": _count(mixer.filter_fn) if mixer is not None else 0,
        "n_layers": len(layers),
        "hyena_layers": len(hyena),
        "kept_attention_layers": len(layers) - len(hyena),
    }
    report["shared"] = report["teacher_total"] - per_attention * len(layers)
    return report
