"""Laughing Hyena: long filters in modal (state-space) form and O(1)-per-token recurrent decoding."""

from hyena.recurrence.modal import ModalFilter, ModalFitConfig, fit_modal, modal_powers, relative_l2

__all__ = ["ModalFilter", "ModalFitConfig", "fit_modal", "modal_powers", "relative_l2"]
