"""params.yaml `eval`: which models, which perplexity datasets and contexts, which zero-shot tasks;
and the local files those settings read (a DVC stage must list them as deps)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hyena.core.config import Config, param
from hyena.data.corpus import CorpusError, resolve_corpus
from hyena.evaluate import streams
from hyena.evaluate.passkey import PasskeyConfig
from hyena.evaluate.positions import PositionsConfig
from hyena.evaluate.streams import DatasetSource


@dataclass
class EvalConfig(Config):
    """params.yaml `eval`: which models, which perplexity datasets and contexts, which zero-shot tasks."""

    SECTION = "eval"

    models: dict[str, str] = param(
        {"teacher": "teacher", "pretrained": "pretrained", "distilled": "distilled", "finetuned": "finetuned"},
        "report name -> model: teacher | pretrained | distilled | finetuned | recurrent (the pipeline's own), "
        "an HF dir, a .gguf file or a hub id")
    tokenizer: str = param("", "tokenizer for a model dir without one (\"\": the student's recorded teacher)")
    device: str = param("auto", "auto | cpu | cuda (fp32; the long-context probes: probe_precision)")
    context: int = param(1024, "perplexity context (paper Table 1: 1024)", ge=2)
    stride: int = param(0, "sliding-window stride (0: non-overlapping windows)", ge=0)
    max_windows: int = param(0, "windows per dataset (0: all)", ge=0)
    batch_size: int = param(1, "windows per forward", ge=1)
    datasets: dict[str, DatasetSource | str] = param(
        help="Table 1 datasets: report name -> source (hyena/evaluate/streams.py); a local source belongs in "
             "the eval stage's deps in dvc.yaml",
        default_factory=lambda: {
            "wikitext": DatasetSource("../shared/data/wikitext-2-raw/wiki.test.raw"),
            "owt": DatasetSource(streams.TOKENIZED_VAL),
        })
    long_contexts: list[int] = param([2048, 4096, 8192], "extra contexts for the extrapolation curve")
    long_context_datasets: list[str] = param(["wikitext"], "names in eval.datasets on that curve")
    long_max_windows: int = param(0, "windows per long context (0: all)", ge=0)
    positions: PositionsConfig = param(PositionsConfig(), "perplexity by position inside long windows (hyena/evaluate/positions.py)")
    passkey: PasskeyConfig = param(PasskeyConfig(), "passkey retrieval at long context (hyena/evaluate/passkey.py)")
    probe_precision: Literal["fp32", "bf16"] = param(
        "fp32", "matmul precision of the position curve and the passkey probe: fp32 | bf16 (autocast: an 8K "
                "forward 2x faster for a student, 1.5x for the teacher on CPUs with avx512_bf16; bucket "
                "perplexities within 1% of fp32, reports/long-context.md). Table 1 and the tasks stay fp32")
    tasks: list[str] = param(["arc_easy", "arc_challenge", "logiqa", "piqa", "sciq", "winogrande", "wsc"],
                             "lm-eval zero-shot tasks ([]: skip)")
    task_source: Literal["local", "builtin"] = param(
        "local", "local: shipped task YAMLs over task_data_dir | builtin: lm-eval's own (hub)")
    task_data_dir: str = param("../shared/eval", "data of the offline tasks")
    include_path: str = param("", "directory of your own lm-eval task YAMLs, run next to eval.tasks "
                                  "(Table 2's extra rows; \"\": none)")
    include_tasks: list[str] = param([], "tasks or groups of include_path to run ([]: every task defined there)")
    limit: int = param(0, "examples per task (0: all)", ge=0)
    lm_eval_batch_size: int = param(8, "lm-eval batch size", ge=1)
    reference: str = param("../shared/eval/pythia_reference_results/pythia-70m_zero-shot_step143000.json",
                           "published Pythia-70M results (\"\": none)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.models:
            raise ValueError("eval.models is empty: give at least one name: model")
        if self.include_tasks and not self.include_path:
            raise ValueError("eval.include_tasks needs eval.include_path (the directory that defines them)")
        if not 0 <= self.stride <= self.context:
            raise ValueError(f"eval.stride must be in [0, context={self.context}], got {self.stride}")
        self.datasets = {name: DatasetSource(src) if isinstance(src, str) else src for name, src in self.datasets.items()}
        for name in self.datasets:
            if not streams.NAME.fullmatch(name):
                raise ValueError(f"eval.datasets: name {name!r} may use only letters, digits and _.- (it becomes a metric key)")
        unknown = [d for d in self.long_context_datasets if d not in self.datasets]
        if unknown:
            raise ValueError(f"eval.long_context_datasets: {', '.join(unknown)} not in eval.datasets "
                             f"({', '.join(self.datasets) or 'empty'}): add it there or drop it from the curve")

    def local_inputs(self) -> dict[str, list[Path]]:
        """The local files each setting reads, by params key (eval.datasets.NAME, eval.positions.source,
        eval.include_path); sources that cannot be resolved are left out (the evaluation names those)."""
        inputs: dict[str, list] = {}
        for name, src in self.datasets.items():
            try:
                inputs[f"eval.datasets.{name}"] = src.local_files() or []
            except CorpusError:
                continue
        if self.positions.context:
            try:
                inputs["eval.positions.source"] = resolve_corpus(self.positions.source) or []
            except CorpusError:
                pass
        if self.include_path:
            inputs["eval.include_path"] = [self.include_path]
        return {key: [Path(f) for f in files] for key, files in inputs.items()}

    def override(self, models: dict[str, str] | None = None, tasks: str | None = None, limit: int | None = None,
                 max_windows: int | None = None) -> None:
        """Apply a command line's choices: other models, comma-separated tasks ('' skips lm-eval,
        your own tasks included), examples per task and windows per dataset (0: all)."""
        for option, value in (("--limit", limit), ("--max-windows", max_windows)):
            if value is not None and value < 0:
                raise ValueError(f"{option} must be >= 0 (0: all), got {value}")
        if models:
            self.models = models
        if tasks is not None:
            self.tasks = [t.strip() for t in tasks.split(",") if t.strip()]
            if not self.tasks:
                self.include_path, self.include_tasks = "", []
        if limit is not None:
            self.limit = limit
        if max_windows is not None:
            self.max_windows = max_windows
