"""Model cards: a README.md with the Hugging Face YAML header in every student directory.

The header carries what the Hub reads (`library_name`, `pipeline_tag`, `tags`, and `base_model`
/ `datasets` where the teacher and the corpus are Hub ids: a local path is not a valid Hub
reference) plus a `hyena:` block that a later stage reads back to extend the lineage: the
teacher (source, family, weights hash), the params sections that made the model, the training
tokens of every stage behind it, and the metrics its own stage measured. The body says the same
for people, and how to load the model.

Evaluation metrics (perplexity, lm-eval accuracy) are not in the card: the eval stage runs after
the students are written and does not modify other stages' outputs; they live in the eval
stage's report.md and metrics.json. A card holds no wall-clock figures, so the same params write
the same bytes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CARD = "README.md"

# what each model of the pipeline is, and the module that registers its class with transformers
KINDS: dict[str, str] = {
    "layer_00": "the undistilled student: the teacher with every attention replaced by a Hyena operator, "
                "before any training (the start of the distillation chain)",
    "distilled": "the MSE-distilled student: each decoder layer trained in turn to reproduce the teacher's "
                 "output of that layer (progressive knowledge transfer, Scavenging Hyena)",
    "finetuned": "the MSE-distilled student after a cross-entropy fine-tune of the whole network",
    "pretrained": "the same student architecture trained from random weights by cross-entropy (the paper's "
                  "baseline; every weight random, whatever `student.init` says)",
    "recurrent": "the fine-tuned student with every long filter distilled into a modal state-space recurrence "
                 "(Laughing Hyena): generation carries an O(1) state per token instead of re-running the prefix",
}
# the module a user imports to load each kind ("hyena.student" keeps that import working since the
# model moved to hyena.model.modeling: cards written before the move name it)
REGISTERS = {"hyena_student": "hyena.student", "hyena_recurrent_student": "hyena.recurrence"}
TAGS = ["hyena", "long-convolution", "distillation", "scavenging-hyena"]


def _is_hub_id(source: str) -> bool:
    """"org/name" or "name" (what the Hub accepts as a reference), not a path or a file."""
    return bool(source) and not source.startswith(("/", ".", "~")) and source.count("/") <= 1 \
        and "\\" not in source and not source.endswith((".gguf", ".jsonl", ".txt", ".parquet"))


def _plain(value: Any) -> Any:
    """YAML-safe data: dataclasses and tuples unpacked, floats to 6 significant digits."""
    if dataclasses.is_dataclass(value):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return float(f"{value:.6g}")
    return value


@dataclass
class ModelCard:
    """What a student directory's README.md says about the model in it."""

    name: str  # which model of the pipeline: a key of KINDS
    teacher: dict  # the teacher's provenance (teacher.json: source, family, weights_hash, ...)
    recipe: dict[str, Any] = field(default_factory=dict)  # params section -> its values
    training_tokens: dict[str, int] = field(default_factory=dict)  # stage -> token positions processed
    metrics: dict[str, Any] = field(default_factory=dict)  # measured by the stage that wrote the model

    def derive(self, name: str, recipe: dict | None = None, training_tokens: dict | None = None,
               metrics: dict | None = None) -> ModelCard:
        """The card of a model another stage made from this one: teacher, recipe and training
        tokens carry over and grow; metrics are the new model's own."""
        return ModelCard(name, dict(self.teacher), {**self.recipe, **(recipe or {})},
                         {**self.training_tokens, **(training_tokens or {})}, dict(metrics or {}))

    # --- writing ---------------------------------------------------------------------------

    def header(self, model_type: str) -> dict:
        head: dict[str, Any] = {"library_name": "transformers", "pipeline_tag": "text-generation",
                                "tags": [*TAGS, model_type] + (["laughing-hyena"] if self.name == "recurrent" else [])}
        source = str(self.teacher.get("source", ""))
        if _is_hub_id(source) and not self.teacher.get("random_init"):
            head["base_model"] = source
        corpus = self.recipe.get("tokenize", {}).get("corpus", "")
        if _is_hub_id(str(corpus)):
            head["datasets"] = [corpus]
        head["hyena"] = {"model": self.name, "model_type": model_type, "teacher": _plain(self.teacher),
                         "training_tokens": _plain(self.training_tokens), "metrics": _plain(self.metrics),
                         "recipe": _plain(self.recipe)}
        return head

    def render(self, model_type: str, location: str = "path/to/this/directory") -> str:
        t = self.teacher
        module = REGISTERS.get(model_type, "hyena.student")
        teacher = f"`{t.get('source', '?')}`" + (f" ({t['family']})" if t.get("family") else "")
        if t.get("random_init"):
            teacher += f", its architecture with random weights (seed {t.get('seed', 0)})"
        lines = [
            "---", yaml.safe_dump(self.header(model_type), sort_keys=False, allow_unicode=True).rstrip(), "---", "",
            f"# Hyena student: {self.name}", "",
            f"{KINDS.get(self.name, self.name)[0].upper()}{KINDS.get(self.name, self.name)[1:]}.", "",
            f"- Teacher: {teacher}; weights hash `{t.get('weights_hash', '?')}`.",
            f"- Model type `{model_type}`: the teacher's own architecture with Hyena long-convolution mixers in "
            "place of attention (arXiv 2401.17574)"
            + ("; modal recurrences for the long filters (arXiv 2310.18780)." if model_type == "hyena_recurrent_student" else "."),
            *self._mixer_lines(),
            "",
            "## Training", "",
        ]
        if self.training_tokens:
            lines += ["| stage | token positions processed |", "| --- | ---: |"]
            lines += [f"| {stage} | {n:,} |" for stage, n in self.training_tokens.items()]
            lines += ["", "Epochs included; `distill` is summed over its per-layer stages."]
        else:
            lines += ["None: initialised from the teacher."]
        lines += ["", "## Metrics at write time", ""]
        if self.metrics:
            lines += ["| metric | value |", "| --- | ---: |"]
            lines += [f"| {k} | {v} |" for k, v in _plain(self.metrics).items()]
            lines += ["", "Measured by the stage that wrote this model (validation data of the tokenize stage)."]
        else:
            lines += ["None."]
        lines += [
            "", "Perplexity (Table 1) and lm-eval zero-shot accuracy (Table 2) come later: the `eval` stage writes them to "
            "`report.md` and `metrics.json` in its own output directory (`paths.eval`) and leaves this directory as it is.",
            "", "## Load it", "", "```python",
            f"import {module}  # registers model_type {model_type} with transformers' Auto classes",
            "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
            f'model = AutoModelForCausalLM.from_pretrained("{location}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{location}")',
            'ids = tokenizer("The meaning of life is", return_tensors="pt").input_ids',
            "print(tokenizer.decode(model.generate(ids, max_new_tokens=20, do_sample=False)[0]))", "",
            "# lm-eval on the in-memory model",
            "from lm_eval.models.huggingface import HFLM",
            'lm = HFLM(pretrained=model, tokenizer=tokenizer, backend="causal")', "```", "",
            "No `trust_remote_code`: the classes come from the `scavenging-hyena` package (`pip install -e .` in its "
            "repository), and the weights are safetensors.", "",
            "## Recipe", "", "The params.yaml sections that made this model:", "", "```yaml",
            yaml.safe_dump(_plain(self.recipe), sort_keys=False).rstrip() if self.recipe else "{}", "```", "",
        ]
        return "\n".join(lines)

    def _mixer_lines(self) -> list[str]:
        """A line for MultiHyena students (none for the Hyena mixer, whose cards stay as they were)."""
        student = self.recipe.get("student", {}) if isinstance(self.recipe.get("student"), dict) else {}
        if student.get("mixer") != "multihyena":
            return []
        return ["- Mixer: MultiHyena (Laughing Hyena, section 4): per head, y_t = sum_{s<=t} h[t-s] (q_t . k_s) v_s, one "
                "long filter per head, heads "
                + (f"{student.get('heads')}/{student.get('kv_heads')} (query/key-value; 0: the teacher's)."
                   if "heads" in student else "as the teacher's.")]

    def write(self, directory: str | Path, model=None, location: str = "path/to/this/directory") -> Path:
        """Write README.md into `directory` (the model's config names its model_type)."""
        model_type = getattr(getattr(model, "config", None), "model_type", None) or "hyena_student"
        path = Path(directory) / CARD
        path.write_text(self.render(model_type, location))
        return path

    # --- reading ---------------------------------------------------------------------------

    @classmethod
    def of(cls, directory: str | Path, model) -> ModelCard:
        """The card in `directory`, or, for a student made outside the pipeline (no card), one
        that knows only the teacher its config records."""
        if (Path(directory) / CARD).is_file():
            return cls.read(directory)
        config = model.config
        teacher = {"source": getattr(config, "teacher_source", ""),
                   "family": (getattr(config, "teacher_config", None) or {}).get("model_type", "")}
        return cls(Path(directory).name, teacher)

    @classmethod
    def read(cls, directory: str | Path) -> ModelCard:
        """The card a stage wrote into `directory` (FileNotFoundError / ValueError name the file)."""
        path = Path(directory) / CARD
        if not path.is_file():
            raise FileNotFoundError(f"no model card {path}: rerun the stage that writes {directory}")
        text = path.read_text()
        parts = text.split("---\n", 2)
        try:
            head = yaml.safe_load(parts[1]) if text.startswith("---\n") and len(parts) == 3 else None
        except yaml.YAMLError:
            head = None
        info = head.get("hyena") if isinstance(head, dict) else None
        if not isinstance(info, dict):
            raise ValueError(f"{path} has no `hyena:` block in its YAML header: rerun the stage that writes {directory}")
        return cls(info.get("model", ""), info.get("teacher") or {}, info.get("recipe") or {},
                   info.get("training_tokens") or {}, info.get("metrics") or {})
