"""Stage `tokenize`: corpus -> data/tokens/{train,val}.npy + manifest.json (see hyena.data)."""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    # `python pipeline/tokenize.py` puts pipeline/ first on sys.path, where this file would shadow
    # the standard library's `tokenize` (imported by typer via inspect). Prefer `python -m`.
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]

from pathlib import Path  # noqa: E402

import typer  # noqa: E402

from hyena.data import TokenizeParams, build_token_dataset, resolve_corpus, teacher_max_positions  # noqa: E402
from pipeline.common import PARAMS, StageError, load_params, one_line_errors, section  # noqa: E402

app = typer.Typer(add_completion=False)


def teacher_source(params: dict) -> str:
    """params['teacher']['source'] (the lead's shared section), with a clear error if absent."""
    source = (params.get("teacher") or {}).get("source")
    if not source:
        raise StageError("params.yaml has no teacher.source: set it to a hub id, a model directory or a .gguf file")
    return str(source)


@app.command()
@one_line_errors
def main(
    params: Path = typer.Option(PARAMS, help="params.yaml with `teacher` and `tokenize` sections"),
    out: Path = typer.Option(Path("data/tokens"), help="output directory (replaced atomically)"),
) -> None:
    """Tokenise the corpus with the teacher's tokenizer, split by document, pack, write token arrays."""
    all_params = load_params(params)
    cfg = section(all_params, "tokenize", TokenizeParams)
    source = teacher_source(all_params)
    cfg.validate()
    resolve_corpus(cfg.corpus)  # a missing corpus fails before the slow tokenizer load
    max_positions = teacher_max_positions(source)
    if max_positions is not None and cfg.context > max_positions:
        raise StageError(
            f"tokenize.context {cfg.context} exceeds the teacher's maximum positions {max_positions} "
            f"({source}): lower tokenize.context"
        )
    from hyena.teachers import load_tokenizer

    manifest = build_token_dataset(cfg, load_tokenizer(source), source, out, max_positions)
    for split, info in manifest["splits"].items():
        typer.echo(
            f"{split}: {info['documents']} documents, {info['tokens']} tokens -> {info['sequences']} x "
            f"{cfg.context} (dropped tail {info['dropped_tail_tokens']} tokens)"
        )
    typer.echo(f"wrote {out} (manifest {manifest['content_hash'][:16]})")


if __name__ == "__main__":
    app()
