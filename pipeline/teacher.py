"""Stage `teacher`: the teacher of params `teacher` as a local HF directory (paths.teacher).

Reads `teacher.source` (hub id, model directory or .gguf file) once; every later stage loads the
written directory, so all of them see exactly the same weights (random_init included) and none
pays the GGUF dequantisation again.
"""

from __future__ import annotations

from pathlib import Path

import typer

from hyena.core.io import atomic_dir, claim_output
from hyena.teachers import TeacherConfig, save_teacher
from pipeline.params import PARAMS_OPTION, Params, command, stage_app

app = stage_app()


@command(app)
def main(params_file: Path = PARAMS_OPTION) -> None:
    """Load the teacher named in params and write it (fp32 safetensors, config, tokenizer, provenance)."""
    params = Params.read(params_file)
    cfg, out = params.get("teacher", TeacherConfig), Path(params.paths.teacher)
    claim_output(out, "teacher")
    with atomic_dir(out, "teacher") as tmp:
        record = save_teacher(cfg, tmp)
    typer.echo(f"teacher {cfg.source} ({record['family']}, {record['n_layers']} layers, "
               f"weights {record['weights_hash']}) -> {out}")


if __name__ == "__main__":
    app()
