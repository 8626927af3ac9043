"""Trainers: the LR schedule, data-parallel plumbing, layer distillation and LM training."""
