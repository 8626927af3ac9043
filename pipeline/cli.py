"""`hyena-distill`: every pipeline stage as a subcommand, in pipeline order, plus tools.

`dvc repro` runs the stages for you (dvc.yaml); these commands run one by hand.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Distil attention transformers into Hyena long-convolution students (Scavenging Hyena).")

# (command, module, help) in pipeline order; each module has a Typer `main`
COMMANDS = [
    ("tokenize", "pipeline.tokenize", "Stage 1: tokenise, split by document and pack the corpus."),
    ("dump-activations", "pipeline.dump_activations", "Stage 2: cache every teacher layer's output in Zarr."),
    ("init-student", "pipeline.init_student", "Stage 3: build the Hyena student from the teacher."),
    ("distill", "pipeline.distill", "Stage 4 (per layer): distil one layer by MSE to the teacher's."),
    ("assemble", "pipeline.assemble", "Stage 5: assemble the distilled layers into one student."),
    ("finetune", "pipeline.finetune", "Stage 6: cross-entropy fine-tune the distilled student."),
    ("pretrain", "pipeline.pretrain", "Baseline: the same student from scratch at equal compute."),
    ("distill-recurrent", "pipeline.distill_recurrent", "Laughing Hyena: long filters -> modal recurrences."),
    ("eval", "pipeline.evaluate", "Perplexity and lm-eval zero-shot tasks; paper-style report."),
    ("ablations", "pipeline.ablations", "Compare DVC experiments: per-layer MSE table and plot."),
    ("curves", "pipeline.curves", "Training curves (DVCLive logs) as one PNG."),
    ("inspect", "pipeline.inspect_store", "Inspect or verify an activation store."),
    ("generate", "pipeline.generate", "Generate text with a teacher, student or recurrent student."),
    ("preset", "pipeline.preset", "Replace params.yaml with a preset (cpu-experiment, cpu-smoke, paper-pythia70m, tiny)."),
]

for name, module, help_text in COMMANDS:
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module:
            raise
        continue  # a stage that is not part of this checkout
    app.command(name, help=help_text)(mod.main)


if __name__ == "__main__":
    app()
