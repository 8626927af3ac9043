"""How faithful a recurrent student is to the convolutional student it was distilled from: each
mixer's output error on the student's real activations, both students' perplexity on the same
windows, and a decode check (FFT prefill + O(1) recurrent steps against the stateless forward).
Also the inputs of the conversion: the convolutional student, checked, and calibration windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from hyena.core.io import reading_weights
from hyena.data.tokens import load_tokens
from hyena.evaluate.perplexity import stream_perplexity
from hyena.model.modeling import HyenaStudentForCausalLM
from hyena.recurrence.calibrate import capture_mixer_io
from hyena.recurrence.modal import relative_l2
from hyena.recurrence.model import HyenaRecurrentForCausalLM, RecurrentConfig


@torch.no_grad()
def layer_output_errors(student: HyenaStudentForCausalLM, recurrent: HyenaRecurrentForCausalLM,
                        input_ids: torch.Tensor) -> list[float]:
    """Relative L2 error of each recurrent mixer's output vs the student mixer's on the SAME input
    (the student's real activations for `input_ids` (B, L)): ||y_rec - y|| / ||y|| per layer."""
    errors = []
    for i, (u, y) in capture_mixer_io(student, input_ids).items():
        y_rec = recurrent.mixer(i).chunk(u)
        errors.append(float(relative_l2(y_rec.flatten().double(), y.flatten().double())))
    return errors


def decode_check(recurrent, ids: torch.Tensor, n: int) -> float:
    """Max relative error of logits from prefill + n recurrent steps vs the model's full pass."""
    with torch.no_grad():
        P = ids.shape[1] - n
        cache = recurrent.new_cache()
        logits = [recurrent(input_ids=ids[:, :P], cache=cache).logits]
        for t in range(P, ids.shape[1]):
            logits.append(recurrent(input_ids=ids[:, t : t + 1], cache=cache).logits)
        rec = torch.cat(logits, dim=1)
        full = recurrent(input_ids=ids, use_cache=False).logits
    return float((rec - full).norm() / full.norm())


def faithfulness(student, recurrent, reports: list[dict], val, cfg: RecurrentConfig) -> dict:
    """How faithful the recurrent student is: each mixer's output error on held-out windows of the
    1-D token stream `val` (into `reports`, one per layer), both students' perplexity on the same
    windows, and prefill + steps vs full pass."""
    n_err = min(cfg.error_sequences, len(val) // cfg.context)
    windows = torch.from_numpy(np.asarray(val[: n_err * cfg.context]).astype(np.int64)).view(n_err, cfg.context)
    for report, err in zip(reports, layer_output_errors(student, recurrent, windows), strict=True):
        report["mixer_output_rel_err"] = err
    ppl = {name: stream_perplexity(model, val, context=cfg.context, max_windows=cfg.max_windows or None,
                                   batch_size=cfg.batch_size, desc=f"ppl {name}").ppl
           for name, model in (("student", student), ("recurrent", recurrent))}
    n_check = min(cfg.decode_check_tokens, cfg.context - 1)
    return {
        "filter_rel_l2_mean": float(np.mean([r["filter_rel_l2_mean"] for r in reports])),
        "filter_rel_l2_max": float(np.max([r["filter_rel_l2_max"] for r in reports])),
        "mixer_output_rel_err_mean": float(np.mean([r["mixer_output_rel_err"] for r in reports])),
        "mixer_output_rel_err_max": float(np.max([r["mixer_output_rel_err"] for r in reports])),
        "ppl_owt_student": ppl["student"],
        "ppl_owt_recurrent": ppl["recurrent"],
        "ppl_rel_diff": ppl["recurrent"] / ppl["student"] - 1.0,
        "ppl_context": cfg.context,
        "ppl_windows": cfg.max_windows,
        "decode_check_rel_err": decode_check(recurrent, windows[:1], n_check) if n_check > 0 else None,
    }


def load_conv_student(path: str | Path) -> HyenaStudentForCausalLM:
    """The convolutional student in HF directory `path` (eval mode, frozen), refusing another kind."""
    p = Path(path)
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not an HF model directory (no config.json): run the finetune stage")
    with reading_weights(p, "rerun the finetune stage"):
        model = AutoModelForCausalLM.from_pretrained(str(p), dtype=torch.float32)
    if type(model) is not HyenaStudentForCausalLM:
        raise ValueError(f"{path} is a {type(model).__name__}, not a convolutional Hyena student")
    return model.eval().requires_grad_(False)


def calibration_ids(cfg: RecurrentConfig, tokens: str | Path) -> torch.Tensor | None:
    """The first `calib.sequences` training rows (cut to fit_len) as (B, T) ids, or None."""
    if cfg.calib.sequences == 0:
        return None
    train = load_tokens(tokens, "train")
    if len(train) < cfg.calib.sequences:
        raise ValueError(f"{tokens}/train.npy has {len(train)} sequences, fewer than recurrent.calib.sequences={cfg.calib.sequences}")
    return torch.from_numpy(np.asarray(train[: cfg.calib.sequences, : cfg.fit_len]).astype(np.int64))
