"""`generate` CLI: sample text from the teacher, a Hyena student or a recurrent student.

    python -m pipeline.generate --model recurrent --prompt "The city of" --max-new-tokens 64
    python -m pipeline.generate --model teacher --greedy        # the pipeline's teacher (paths.teacher)

`--model` takes the pipeline's own models by name (teacher, pretrained, distilled, finetuned,
recurrent) or any HF dir, .gguf file or hub id. Prints the continuation and the decoding speed
(new tokens / second, prefill included).
"""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline.params import PARAMS, StageError, load_params, one_line_errors, paths

app = typer.Typer(add_completion=False)


@app.command()
@one_line_errors
def main(
    model: str = typer.Option(..., help="teacher | pretrained | distilled | finetuned | recurrent, or an HF dir, .gguf file or hub id"),
    prompt: str = typer.Option("The meaning of life is", help="text to continue"),
    max_new_tokens: int = typer.Option(64, min=1, help="tokens to generate"),
    greedy: bool = typer.Option(False, "--greedy", help="argmax decoding (ignores the sampling options)"),
    temperature: float = typer.Option(1.0, help="sampling temperature (> 0)"),
    top_k: int = typer.Option(50, help="sample among the k most likely tokens (0: all)"),
    top_p: float = typer.Option(1.0, help="nucleus sampling mass in (0, 1]"),
    seed: int = typer.Option(0, help="sampling seed"),
    params: Path = typer.Option(PARAMS, help="params.yaml (for the pipeline's model names)"),
) -> None:
    """Generate a continuation of --prompt and report tokens/s."""
    import torch

    from hyena.evaluate.runner import load_model, load_model_tokenizer
    from hyena.recurrence.generation import Sampling, generate, model_kind
    from pipeline.evaluate import PIPELINE_MODELS, resolve_model

    sampling = Sampling(greedy=greedy, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    source = model
    if model == "teacher" or model in PIPELINE_MODELS:
        source = resolve_model(model, paths(load_params(params)))
    lm = load_model(source)
    tokenizer, _ = load_model_tokenizer(source, lm, [])
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
