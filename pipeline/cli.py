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
    ("check-params", "pipeline.check_params", "Stage 0: check all of params.yaml (DVC runs it on any change)."),
    ("teacher", "pipeline.teacher", "Stage 1: write the teacher as a local HF directory."),
    ("tokenize", "pipeline.tokenize_corpus", "Stage 2: tokenise, split by document and pack the corpus."),
    ("dump-activations", "pipeline.dump_activations", "Stage 3: cache every teacher layer's output in Zarr."),
    ("init-student", "pipeline.init_student", "Stage 4: build the Hyena student from the teacher."),
    ("distill", "pipeline.distill", "Stage 5 (per layer): distil one layer by MSE to the teacher's."),
    ("assemble", "pipeline.assemble", "Stage 6: assemble the distilled layers into one student."),
    ("finetune", "pipeline.finetune", "Stage 7: cross-entropy fine-tune the distilled student."),
    ("pretrain", "pipeline.pretrain", "Baseline: the same student from scratch at equal compute."),
    ("distill-recurrent", "pipeline.distill_recurrent", "Laughing Hyena: long filters -> modal recurrences."),
    ("eval", "pipeline.evaluate", "Perplexity and lm-eval zero-shot tasks; paper-style report."),
    ("ablations", "tools.ablations", "Compare DVC experiments: per-layer MSE table and plot."),
    ("rank-layers", "tools.rank_layers", "Which attention layers a hybrid should keep (substitution cost)."),
    ("recipes", "tools.recipes", "Compare whole recipes (DVC experiments): perplexities, layer errors, wall time."),
    ("curves", "tools.curves", "Training curves (DVCLive logs) as one PNG."),
    ("inspect", "tools.inspect_store", "Inspect or verify an activation store."),
    ("generate", "tools.generate", "Generate text with a teacher, student or recurrent student."),
    ("preset", "tools.preset", "Write params.yaml from a preset (cpu-smoke, cpu-experiment, paper-pythia70m, tiny)."),
]

for name, module, help_text in COMMANDS:
    app.command(name, help=help_text)(importlib.import_module(module).main)


if __name__ == "__main__":
    app()
