"""`generate` CLI: sample text from the teacher, a Hyena student or a recurrent student.

    python -m pipeline.generate --model data/students/recurrent --prompt "The city of" --max-new-tokens 64
    python -m pipeline.generate --model teacher --greedy        # teacher.source from params.yaml

Prints the continuation and the decoding speed (new tokens / second, prefill included).
"""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline.common import PARAMS, StageError, load_params, one_line_errors

app = typer.Typer(add_completion=False)


@app.command()
@one_line_errors
def main(
    model: str = typer.Option(..., help="HF dir (student, recurrent student, transformer), .gguf file, hub id, or 'teacher' (params teacher.source)"),
    prompt: str = typer.Option("The meaning of life is", help="text to continue"),
    max_new_tokens: int = typer.Option(64, min=1, help="tokens to generate"),
    greedy: bool = typer.Option(False, "--greedy", help="argmax decoding (ignores the sampling options)"),
    temperature: float = typer.Option(1.0, help="sampling temperature (> 0)"),
    top_k: int = typer.Option(50, help="sample among the k most likely tokens (0: all)"),
    top_p: float = typer.Option(1.0, help="nucleus sampling mass in (0, 1]"),
    seed: int = typer.Option(0, help="sampling seed"),
    params: Path = typer.Option(PARAMS, help="params.yaml (only read for --model teacher and the tokenizer fallback)"),
) -> None:
    """Generate a continuation of --prompt and report tokens/s."""
    import torch

    import hyena.recurrence  # noqa: F401  (registers the student and recurrent student classes)
    from hyena.evaluate.runner import load_model, load_model_tokenizer
    from hyena.recurrence.generation import Sampling, generate, model_kind

    sampling = Sampling(greedy=greedy, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    teacher_source = ""
    if model == "teacher" or Path(params).is_file():
        try:
            teacher_source = str((load_params(params).get("teacher") or {}).get("source", ""))
        except StageError:
            teacher_source = ""
    lm = load_model(model, teacher_source=teacher_source)
    tokenizer, _ = load_model_tokenizer(model, lm, [teacher_source] if teacher_source else [])
    ids = torch.tensor([tokenizer.encode(prompt)], dtype=torch.long)
    if ids.shape[1] == 0:
        raise StageError("--prompt encodes to no tokens: give some text")
    vocab = lm.get_input_embeddings().num_embeddings
    if int(ids.max()) >= vocab:
        raise StageError(f"the tokenizer gives id {int(ids.max())} but {model} has {vocab} embeddings: wrong tokenizer for this model")
    new, seconds = generate(lm, ids, max_new_tokens, sampling)
    typer.echo(prompt + tokenizer.decode(new[0], skip_special_tokens=True))
    n = new.shape[1]
    typer.echo(f"[{model_kind(lm)}] {n} new tokens in {seconds:.2f} s: {n / seconds:.1f} tokens/s "
               f"(prompt {ids.shape[1]} tokens)", err=True)


if __name__ == "__main__":
    app()
