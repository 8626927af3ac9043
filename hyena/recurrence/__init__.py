"""Laughing Hyena: long filters in modal (state-space) form and O(1)-per-token recurrent decoding.

Importing this package registers the recurrent student ("hyena_recurrent_student") with
AutoConfig / AutoModelForCausalLM.
"""

from hyena.recurrence.calibrate import CalibrationConfig, capture_mixer_io
from hyena.recurrence.mixer import HyenaRecurrentCache, ModalLayerState, RecurrentHyenaMixer
from hyena.recurrence.modal import ModalFilter, ModalFitConfig, fit_modal, modal_powers, relative_l2
from hyena.recurrence.model import (
    HyenaRecurrentForCausalLM,
    HyenaRecurrentHFConfig,
    RecurrentConfig,
    to_recurrent,
)

__all__ = [
    "CalibrationConfig", "capture_mixer_io", "ModalLayerState", "HyenaRecurrentCache", "HyenaRecurrentHFConfig", "HyenaRecurrentForCausalLM",
    "ModalFilter", "ModalFitConfig", "RecurrentConfig", "RecurrentHyenaMixer", "fit_modal", "layer_output_errors",
    "modal_powers", "relative_l2", "to_recurrent",
]
