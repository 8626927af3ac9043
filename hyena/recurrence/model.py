"""The recurrent student: a Hyena student whose long filters are modal, decoding in O(1) per token.

`HyenaRecurrentForCausalLM` is `HyenaStudentForCausalLM` with every `HyenaMixer` replaced by a
`RecurrentHyenaMixer` (same projections and short conv; modal long filters instead of the
implicit FFN). Its config (model_type "hyena_recurrent_student") is the student's plus
`modal = {order, min_decay, fit_len}`, so `save_pretrained` / `AutoModelForCausalLM.from_pretrained`
round-trip it as a regular HF directory (after `import hyena.recurrence`, which registers it).

Without a cache (`use_cache=False`, e.g. perplexity evaluation) a forward pass is the FFT
convolution with the modal filters. With `use_cache=True` the model carries a `MixerCache` of
modal states (`new_cache()`, inherited from the student) and `generate()` feeds only the new
tokens: prefill by FFT, then one recurrent step per token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForCausalLM

from hyena.core.config import Config, param
from hyena.model.modeling import HyenaStudentForCausalLM, HyenaStudentHFConfig
from hyena.recurrence.calibrate import (
    CalibrationConfig,
    capture_mixer_io,
    long_filter_inputs,
    output_weighted_residues,
    refine_on_outputs,
)
from hyena.recurrence.mixer import RecurrentHyenaMixer
from hyena.recurrence.modal import ModalFitConfig, filter_errors, fit_modal, relative_l2
from hyena.recurrence.multihyena import RecurrentMultiHyena


@dataclass
class RecurrentConfig(Config):
    """params.yaml `recurrent`: Laughing Hyena distillation of the fine-tuned student, and its checks."""

    SECTION = "recurrent"

    fit_len: int = param(2048, "filter taps fitted (>= the longest context you evaluate or generate at)", ge=3)
    fit: ModalFitConfig = param(ModalFitConfig(), "the filter fit (matrix pencil + least squares, optional Adam)")
    calib: CalibrationConfig = param(CalibrationConfig(), "calibration of the fits on the student's own activations")
    context: int = param(1024, "perplexity window of the conv vs recurrent comparison", ge=2)
    max_windows: int = param(0, "perplexity windows (0: all)", ge=0)
    batch_size: int = param(1, "windows per forward pass", ge=1)
    error_sequences: int = param(2, "validation windows for the per-layer mixer output error", ge=1)
    decode_check_tokens: int = param(32, "tokens decoded recurrently after a prefill and compared with the full pass (0: skip)", ge=0)


class HyenaRecurrentHFConfig(HyenaStudentHFConfig):
    """A Hyena student config plus the modal form of its filters."""

    model_type = "hyena_recurrent_student"

    modal: dict | None = None  # {"order": N, "min_decay": ..., "fit_len": L the filters were fitted on}
    use_cache: bool = True  # generation carries the recurrent state

    def modal_order(self) -> int:
        return int((self.modal or {}).get("order", 16))

    def min_decay(self) -> float:
        return float((self.modal or {}).get("min_decay", 1e-6))


class HyenaRecurrentForCausalLM(HyenaStudentForCausalLM):
    """A Hyena student with modal long filters and a recurrent cache for generation."""

    config_class = HyenaRecurrentHFConfig
    config: HyenaRecurrentHFConfig

    def __init__(self, config: HyenaRecurrentHFConfig):
        super().__init__(config)
        hcfg, d = config.hyena_config(), config.teacher_architecture().hidden_size
        for i, layer in enumerate(self.decoder_layers()):
            if not config.is_hyena(i):
                continue  # a kept attention layer decodes with its KV cache
            if config.mixer == "multihyena":  # per-head modal filters, matrix state (recurrence/multihyena.py)
                mixer = RecurrentMultiHyena(d, config.heads, config.kv_heads, hcfg, config.modal_order(), config.min_decay())
                mixer.layer_idx = i
            else:
                mixer = RecurrentHyenaMixer(d, hcfg, config.modal_order(), layer_idx=i, min_decay=config.min_decay())
            self.adapter.set_attention(layer, mixer.to(self.dtype))
        self.generation_config.use_cache = True


def register() -> None:
    """Make AutoConfig / AutoModelForCausalLM know "hyena_recurrent_student" (idempotent)."""
    try:
        AutoConfig.register(HyenaRecurrentHFConfig.model_type, HyenaRecurrentHFConfig)
    except ValueError:
        pass
    try:
        AutoModelForCausalLM.register(HyenaRecurrentHFConfig, HyenaRecurrentForCausalLM)
    except ValueError:
        pass


register()


# --- distillation: student -> recurrent student --------------------------------------------------


@torch.no_grad()
def student_filters(student: HyenaStudentForCausalLM, i: int, L: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer i's materialised long filters (order-1, d, L) and pass-through bias (order-1, d), fp32
    (a MultiHyena layer: one filter per head, (1, H, L) and (1, H))."""
    mixer = student.mixer(i)
    return mixer.filter_fn(L).float(), mixer.filter_fn.bias.float()


def to_recurrent(student: HyenaStudentForCausalLM, cfg: RecurrentConfig | None = None, progress: bool = True,
                 calib_ids: torch.Tensor | None = None) -> tuple[HyenaRecurrentForCausalLM, list[dict]]:
    """Fit every layer's long filters (length `cfg.fit_len`) with N modes; returns the recurrent
    student (eval mode, same dtype/device as `student`) and one fit report per layer.

    With `calib_ids` (B, T <= fit_len) the fits are calibrated on the student's own activations
    for those tokens (calibrate.py): residues re-solved for the mixer's output error, then
    `cfg.calib.steps` Adam steps on it. Without, the filters alone are fitted (the paper's method).
    """
    cfg = cfg or RecurrentConfig()
    fit, calib, fit_len = cfg.fit, cfg.calib, cfg.fit_len
    max_len = student.config.hyena_config().max_len
    if not 3 <= fit_len <= max_len:
        raise ValueError(f"recurrent.fit_len must be in [3, {max_len}] (the student's hyena.max_len), got {fit_len}")
    if calib_ids is not None and calib_ids.shape[-1] > fit_len:
        raise ValueError(f"calibration windows ({calib_ids.shape[-1]} tokens) must not exceed fit_len {fit_len}")
    calibrate = calib_ids is not None and student.config.mixer == "hyena"  # MultiHyena: filter fit only
    io = capture_mixer_io(student, calib_ids) if calibrate else None
    modals, reports = {}, []
    for i in tqdm(student.hyena_layers(), desc="modal fit", unit="layer", disable=not progress):
        h, bias = student_filters(student, i, fit_len)
        modal, report = fit_modal(h, fit, passthrough=bias)
        if io is not None:
            report.update(_calibrate(student.mixer(i), modal, h, *io[i], calib, i))
        modals[i] = modal
        reports.append({"layer": i + 1, **report})
    config = HyenaRecurrentHFConfig(**{k: v for k, v in student.config.to_dict().items()
                                     if k not in ("model_type", "architectures", "transformers_version")})
    config.modal = {"order": fit.order, "min_decay": fit.min_decay, "fit_len": fit_len}
    param = next(student.parameters())
    recurrent = HyenaRecurrentForCausalLM(config).to(device=param.device, dtype=param.dtype)
    result = recurrent.load_state_dict(student.state_dict(), strict=False)
    unexpected = [k for k in result.unexpected_keys if ".filter_fn." not in k]
    missing = [k for k in result.missing_keys if ".modal." not in k]
    if unexpected or missing:
        raise RuntimeError(f"student and recurrent student do not line up: unexpected {unexpected[:5]}, missing {missing[:5]}")
    for i, modal in modals.items():
        recurrent.mixer(i).modal.load_state_dict(modal.state_dict())
    recurrent.generation_config = student.generation_config
    recurrent.generation_config.use_cache = True
    return recurrent.eval(), reports


def _calibrate(op, modal, h, u, y, calib: CalibrationConfig, i: int) -> dict:
    """Calibrate layer i's modal fit on its real input u / output y (in place); the report entries:
    filter errors after calibration, and the output error on the calibration windows before,
    after the closed-form residues and after the Adam steps."""
    mixer = RecurrentHyenaMixer.from_operator(op, modal, i)  # shares op's projections (frozen)

    def output_err() -> float:  # the mixer's kernel cache follows the parameters' versions
        with torch.no_grad():
            return float(relative_l2(mixer.chunk(u).flatten().double(), y.flatten().double()))

    uncalibrated = {f"{k}_uncalibrated": v for k, v in filter_errors(modal, h).items()}
    before = output_err()
    ws, gate = long_filter_inputs(op, u)
    output_weighted_residues(modal, h, ws, gate, filter_weight=calib.filter_weight)
    after_residues = output_err()
    refine_on_outputs(mixer, u, y, calib.steps, calib.lr)
    return {
        **filter_errors(modal, h),
        **uncalibrated,
        "calib_output_rel_err_uncalibrated": before,
        "calib_output_rel_err_residues": after_residues,
        "calib_output_rel_err": output_err(),
        "calib_steps": calib.steps,
    }
