"""`generate` CLI: sample text from the teacher, a Hyena student or a recurrent student.

    python -m tools.generate --model recurrent --prompt "The city of" --max-new-tokens 64
    python -m tools.generate --model teacher --greedy        # the pipeline's teacher (paths.teacher)

    python -m tools.generate --model recurrent --prompts-file prompts.txt --batch-size 16 --output out.jsonl

`--model` takes the pipeline's own models by name (teacher, pretrained, distilled, finetuned,
recurrent) or any HF dir, .gguf file or hub id. Prints the continuation and the decoding speed
(new tokens / second, prefill included).

`--prompts-file` (one prompt a line, or .jsonl with a "prompt" field) generates in left-padded
batches of `--batch-size` with the model's cache, each row stopping at its own EOS, and writes
one JSON line per prompt to `--output` (stdout by default): prompt, completion, its new tokens,
and its batch's seconds and tokens/s (new tokens of all rows over the batch's generate()).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import typer

from hyena.evaluate.runner import load_model, load_model_tokenizer
from hyena.model.generation import Sampling, generate, generate_batch, model_kind, read_prompts
from pipeline.params import PARAMS, PIPELINE_MODELS, StageError, load_params, one_line_errors, paths

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
    prompts_file: Path = typer.Option(None, exists=True, dir_okay=False,
                                      help="prompts, one a line or .jsonl {\"prompt\": ...}: generate in batches (replaces --prompt)"),
    batch_size: int = typer.Option(8, min=1, help="prompts per generate() batch with --prompts-file"),
    output: Path = typer.Option(None, help="JSON lines out with --prompts-file (default: stdout)"),
) -> None:
    """Generate a continuation of --prompt (or of every prompt in --prompts-file) and report tokens/s."""
    sampling = Sampling(greedy=greedy, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    source = model
    if model == "teacher" or model in PIPELINE_MODELS:
        source = paths(load_params(params)).model_source(model)
    lm = load_model(source)
    tokenizer, _ = load_model_tokenizer(source, lm, [])
    if prompts_file is not None:
        _generate_file(lm, tokenizer, prompts_file, batch_size, max_new_tokens, sampling, output, model)
        return
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


def _generate_file(lm, tokenizer, prompts_file: Path, batch_size: int, max_new_tokens: int, sampling,
                   output: Path | None, name: str) -> None:
    """--prompts-file: batches of left-padded prompts, one JSON line per prompt."""
    try:
        texts = read_prompts(prompts_file)
    except ValueError as err:
        raise StageError(str(err)) from err
    if not texts:
        raise StageError(f"{prompts_file} holds no prompts")
    encoded = [tokenizer.encode(t) for t in texts]
    empty = [i + 1 for i, e in enumerate(encoded) if not e]
    if empty:
        raise StageError(f"prompts {empty} of {prompts_file} encode to no tokens")
    out = open(output, "w", encoding="utf-8") if output is not None else sys.stdout
    total_tokens = total_s = 0.0
    try:
        for start in range(0, len(texts), batch_size):
            rows, seconds = generate_batch(lm, encoded[start:start + batch_size], max_new_tokens, sampling)
            n = sum(len(r) for r in rows)
            total_tokens, total_s = total_tokens + n, total_s + seconds
            for i, toks in enumerate(rows):
                out.write(json.dumps({"prompt": texts[start + i], "completion": tokenizer.decode(toks, skip_special_tokens=True),
                                      "new_tokens": len(toks), "batch": start // batch_size, "batch_size": len(rows),
                                      "batch_seconds": round(seconds, 4), "batch_tokens_per_s": round(n / seconds, 2)}) + "\n")
            out.flush()
    finally:
        if output is not None:
            out.close()
    typer.echo(f"[{model_kind(lm)}] {len(texts)} prompts in batches of {batch_size}: {int(total_tokens)} new tokens "
               f"in {total_s:.2f} s, {total_tokens / total_s:.1f} tokens/s ({name})", err=True)


if __name__ == "__main__":
    app()
