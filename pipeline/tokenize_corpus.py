"""Stage `tokenize`: corpus -> paths.tokens/{train,val}.npy + manifest.json (see hyena.data.corpus)."""

from __future__ import annotations

from pathlib import Path

import typer
from transformers import AutoConfig

from hyena.data.corpus import TokenizeConfig, resolve_corpus
from hyena.data.tokens import build_token_dataset
from hyena.teachers import get_adapter, load_tokenizer, teacher_max_positions, teacher_record
from pipeline.params import PARAMS_OPTION, Params, StageError, command, stage_app

app = stage_app()


@command(app)
def main(params_file: Path = PARAMS_OPTION) -> None:
    """Tokenise the corpus with the teacher's tokenizer, split by document, pack, write token arrays."""
    params = Params.read(params_file)
    cfg, p = params.get("tokenize", TokenizeConfig), params.paths
    teacher = params.teacher_dir()
    get_adapter(AutoConfig.from_pretrained(str(teacher)))  # an unsupported family stops here, not at the dump
    resolve_corpus(cfg.corpus)  # a missing corpus fails before the tokenizer load
    max_positions = teacher_max_positions(str(teacher))
    if max_positions is not None and cfg.context > max_positions:
        raise StageError(f"tokenize.context {cfg.context} exceeds the teacher's maximum positions "
                         f"{max_positions}: lower tokenize.context")
    source = teacher_record(teacher).get("source", str(teacher))
    manifest = build_token_dataset(cfg, load_tokenizer(str(teacher)), source, p.tokens, max_positions)
    for split, info in manifest["splits"].items():
        typer.echo(f"{split}: {info['documents']} documents, {info['tokens']} tokens -> {info['sequences']} x "
                   f"{cfg.context} (dropped tail {info['dropped_tail_tokens']} tokens)")
    typer.echo(f"wrote {p.tokens} (manifest {manifest['content_hash'][:16]})")


if __name__ == "__main__":
    app()
