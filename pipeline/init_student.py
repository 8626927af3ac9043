"""Stage `init-student`: build the Hyena student from the teacher (layer 00 of the distillation chain).

Writes the undistilled student (HF format, with the teacher's tokenizer). Layer 1's inputs need no
copy: the student's embeddings are the teacher's, so distill@01 reads the teacher's layer_00.
"""

from __future__ import annotations

from pathlib import Path

import typer

from hyena.core.io import atomic_dir, claim_output, reading_weights
from hyena.data.store import ActivationStore
from hyena.model.build import StudentConfig, build_student
from hyena.model.cards import ModelCard
from hyena.teachers import copy_tokenizer, load_teacher, teacher_record, weights_hash
from pipeline.params import PARAMS_OPTION, Params, StageError, command, stage_app, write_metrics

app = stage_app()


@command(app)
def main(params_file: Path = PARAMS_OPTION) -> None:
    params = Params.read(params_file)
    cfg, p = params.get("student", StudentConfig), params.paths
    out = claim_output(p.layer("00"), "init-student")
    acts = ActivationStore.open(p.activations)
    if cfg.hyena.max_len < acts.seq_len:
        raise StageError(f"student.hyena.max_len {cfg.hyena.max_len} is shorter than the {acts.seq_len}-token sequences "
                         f"in {p.activations} (tokenize.context): raise student.hyena.max_len")
    tdir = params.teacher_dir()
    with reading_weights(tdir, "rerun the teacher stage"):
        teacher = load_teacher(str(tdir))
    want = (acts.attrs.get("teacher") or {}).get("weights_hash")
    if want and want != weights_hash(teacher):
        raise StageError(f"the teacher in {tdir} differs from the one that filled {p.activations}: rerun dump-activations")
    student = build_student(teacher, cfg, teacher_source=teacher_record(tdir).get("source", str(tdir)))
    with atomic_dir(out, "init-student") as tmp:
        student.save_pretrained(tmp)
        copy_tokenizer(tdir, tmp)
        write_metrics(tmp / "chain.json", {})  # hashes of distilled layers so far: none
        ModelCard("layer_00", teacher_record(tdir), params.recipe("student")).write(tmp, student, str(out))
    n = sum(t.numel() for t in student.parameters())
    typer.echo(f"student ({cfg.init} init, {n:,} parameters) -> {out}")


if __name__ == "__main__":
    app()
