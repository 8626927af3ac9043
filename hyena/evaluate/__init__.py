"""Evaluation: token-level perplexity (Table 1), lm-eval zero-shot accuracy (Table 2), report and plots.

Modules: `perplexity` (windowed exp(mean NLL)), `streams` (the token streams of `eval.datasets`: tokenize split, local files, HF datasets),
`harness` (lm-eval on in-memory models, offline task definitions), `report` (markdown tables,
flat DVC metrics), `plots` (PNG charts), `runner` (models x evaluations, output files).
"""

from hyena.evaluate.perplexity import PerplexityResult, plan_windows, stream_perplexity

__all__ = ["PerplexityResult", "plan_windows", "stream_perplexity"]
