"""Kept so that `import hyena.student`, which model cards written before the student was split into
`hyena.model.modeling` (the model) and `hyena.model.build` (building it from a teacher) tell users
to run, still registers the student with `AutoModelForCausalLM`. New code imports those modules."""

from hyena.model.modeling import HyenaStudentForCausalLM, HyenaStudentHFConfig, register

__all__ = ["HyenaStudentForCausalLM", "HyenaStudentHFConfig", "register"]
