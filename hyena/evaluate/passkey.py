"""Passkey retrieval: can a model find a number stated once, far back in its context?

The prompt (the probe of Mohtashami & Jaggi 2023 and LongLoRA), tokenised with the model's own
tokenizer, about `length` tokens long:

    There is an important info hidden inside a lot of irrelevant text. Find it and memorize it.
    I will quiz you about the important information there.
    The grass is green. The sky is blue. ... (filler)
    The pass key is 72391. Remember it. 72391 is the pass key.     <- at depth d of the filler
    The grass is green. ... (filler)
    What is the pass key? The pass key is

and the answer is " 72391". A trial counts as retrieved when greedy decoding would write the whole
answer: the argmax of the model's next-token distribution equals each answer token in turn, with
the answer's earlier tokens fed (teacher forcing). That is exactly greedy decoding of the answer's
length, in one forward pass. Keys are random 5-digit numbers and depths spread evenly over
(0, 1), both from `seed`, so every model sees the same trials.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from hyena.core.config import Config, param

INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
         "I will quiz you about the important information there.\n")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "What is the pass key? The pass key is"


@dataclass
class PasskeyConfig(Config):
    """params.yaml `eval.passkey`: the passkey-retrieval probe."""

    SECTION = "eval.passkey"

    lengths: list[int] = param([1024, 2048, 4096, 8192], "prompt lengths in tokens ([]: skip the probe)")
    trials: int = param(5, "keys per length, at depths spread evenly over the filler", ge=1)
    seed: int = param(0, "keys and depths")
    skip_models: list[str] = param([], "eval.models names not probed (others are ignored): each saves its "
                                       "trials' forwards (at 8K, ~1 min a student on 2 CPU cores)")

    def __post_init__(self) -> None:
        super().__post_init__()
        bad = [n for n in self.lengths if n < 128]
        if bad:
            raise ValueError(f"eval.passkey.lengths: {bad} too short (the prompt's fixed text alone is ~60 tokens): use >= 128")


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _prompt(n_fill: int, depth: float, key: int) -> str:
    before = round(n_fill * depth)
    return INTRO + FILLER * before + NEEDLE.format(key=key) + FILLER * (n_fill - before) + QUESTION


def build_trial(tokenizer, length: int, depth: float, key: int) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) of about `length` tokens in all, the needle at `depth` in [0, 1]."""
    return _fit_trial(tokenizer, length, depth, key)[:2]


def needle_span(tokenizer, length: int, depth: float, key: int) -> tuple[int, int]:
    """Token positions [a, b) of the needle sentence in `build_trial`'s prompt: the lengths of the
    text before it and through it, each tokenized alone without its trailing space (which the
    tokenizer joins to the next word)."""
    n_fill = _fit_trial(tokenizer, length, depth, key)[2]
    before = INTRO + FILLER * round(n_fill * depth)
    return len(_ids(tokenizer, before.rstrip())), len(_ids(tokenizer, (before + NEEDLE.format(key=key)).rstrip()))


def _fit_trial(tokenizer, length: int, depth: float, key: int) -> tuple[list[int], list[int], int]:
    """build_trial's (prompt ids, answer ids) and the number of filler units in the prompt."""
    fixed = len(_ids(tokenizer, INTRO + NEEDLE.format(key=key) + QUESTION + f" {key}"))
    unit = len(_ids(tokenizer, FILLER * 8)) / 8
    n_fill = max(int((length - fixed) / unit), 1)
    while True:  # the estimate can run over by a few tokens: drop filler until it fits
        prompt = _prompt(n_fill, depth, key)
        prompt_ids, full = _ids(tokenizer, prompt), _ids(tokenizer, prompt + f" {key}")
        # the answer as the prompt continues it; if the tokenizer merged across the boundary, alone
        answer = full[len(prompt_ids):] if full[: len(prompt_ids)] == prompt_ids else _ids(tokenizer, f" {key}")
        if len(prompt_ids) + len(answer) <= length or n_fill == 1:
            return prompt_ids, answer, n_fill
        n_fill -= 1


def trials(cfg: PasskeyConfig, length: int) -> list[tuple[float, int]]:
    """(depth, key) of each trial at `length`: the same for every model."""
    rng = np.random.default_rng([cfg.seed, length])
    keys = rng.integers(10_000, 100_000, size=cfg.trials)
    return [((i + 0.5) / cfg.trials, int(k)) for i, k in enumerate(keys)]


@torch.no_grad()
def retrieved(model, prompt: list[int], answer: list[int], device) -> bool:
    """Whether greedy decoding after `prompt` writes `answer` (one teacher-forced forward)."""
    ids = torch.tensor([prompt + answer], device=device)  # (1, T)
    # only the last len(answer) + 1 positions' logits: the vocabulary projection of the other 8K
    # would cost a fifth of the forward
    logits = model(input_ids=ids, use_cache=False, logits_to_keep=len(answer) + 1).logits[0]  # (len(answer)+1, V)
    pred = logits[: len(answer)].argmax(-1).tolist()  # logits at t predict token t+1: the first is the prompt's last
    return pred == answer


def model_passkey(model, tokenizer, cfg: PasskeyConfig, device, name: str, max_positions: int | None) -> dict:
    """{str(length): {"acc", "correct", "trials"} | {"na": reason}} for one model."""
    out: dict[str, dict] = {}
    for length in cfg.lengths:
        if max_positions and length > max_positions:
            out[str(length)] = {"na": f"longer than the model's {max_positions} positions"}
            continue
        correct = 0
        for depth, key in tqdm(trials(cfg, length), desc=f"{name} passkey {length}", leave=False):
            prompt, answer = build_trial(tokenizer, length, depth, key)
            correct += retrieved(model, prompt, answer, device)
        out[str(length)] = {"acc": correct / cfg.trials, "correct": correct, "trials": cfg.trials}
    return out
