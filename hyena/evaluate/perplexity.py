"""Token-level perplexity of a causal LM over one token stream, in fixed-length windows.

Definition (what every number in the report means):

    PPL = exp( (1 / T) * sum_{scored t} -log p(x_t | x_{w_start(t)} .. x_{t-1}) )

where the stream x_0 .. x_{N-1} is cut into windows of `context` tokens and T is the number of
scored tokens.

* Non-overlapping (stride == context, the default): windows [0, C), [C, 2C), ...; every token
  of a window except its first is scored (the first has no left context inside the window),
  so each window scores C - 1 tokens with 0 .. C-1 tokens of context.
* Sliding (stride S < C, the Hugging Face recipe): windows start every S tokens; the first
  window scores its C - 1 predictable tokens, every later window scores only its last S tokens,
  which therefore all see at least C - S tokens of context.  No token is scored twice.
* Only full windows are used (a tail shorter than `context` is dropped), so every scored token
  has the same context budget; `max_windows` keeps the first windows only (short CPU runs).

NLL is summed in fp32 from the logits (not averaged per window), so the result is exact for
any mix of window sizes and batches.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


@dataclass(frozen=True)
class Window:
    begin: int  # first token of the window in the stream
    end: int  # one past the last token
    n_scored: int  # the last n_scored tokens of the window are scored


@dataclass
class PerplexityResult:
    ppl: float
    nll_sum: float  # summed natural-log NLL over scored tokens
    n_scored: int  # T
    n_windows: int
    context: int
    stride: int
    n_tokens_available: int  # length of the stream the windows were cut from
    method: str  # one-line description for the report

    def to_dict(self) -> dict:
        return asdict(self)


def plan_windows(n_tokens: int, context: int, stride: int | None = None, max_windows: int | None = None) -> list[Window]:
    """The windows (and how many tokens each scores) for a stream of n_tokens; see module doc."""
    stride = context if not stride else stride
    if context < 2:
        raise ValueError(f"perplexity context must be >= 2, got {context}")
    if not 0 < stride <= context:
        raise ValueError(f"perplexity stride must be in [1, context={context}], got {stride}")
    windows: list[Window] = []
    begin = 0
    while begin + context <= n_tokens:
        n_scored = context - 1 if begin == 0 or stride == context else stride
        windows.append(Window(begin, begin + context, n_scored))
        if max_windows and len(windows) >= max_windows:
            break
        begin += stride
    return windows


def describe(context: int, stride: int, n_windows: int, n_scored: int) -> str:
    if stride == context:
        how = f"non-overlapping windows of {context} tokens; the first token of each window is unscored"
    else:
        how = (
            f"sliding windows of {context} tokens every {stride} tokens; the first window scores its "
            f"{context - 1} predictable tokens, later windows only their last {stride} tokens"
        )
    return f"token-level exp(mean NLL) over {n_scored} scored tokens in {n_windows} full window(s) ({how})"


@torch.no_grad()
def window_nll(model, input_ids: torch.Tensor, n_scored: int) -> torch.Tensor:
    """Summed NLL per row of the last `n_scored` predictions: input_ids (B, C) -> (B,) fp32."""
    logits = model(input_ids=input_ids, use_cache=False).logits  # (B, C, V)
    # logits at position t predict token t+1: score targets C-n_scored .. C-1.
    pred = logits[:, -n_scored - 1 : -1, :].float()  # (B, n_scored, V)
    target = input_ids[:, -n_scored:]  # (B, n_scored)
    nll = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1), reduction="none")
    return nll.view(target.shape).sum(dim=1)  # (B,)


def stream_perplexity(
    model,
    tokens,
    context: int = 1024,
    stride: int | None = None,
    max_windows: int | None = None,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    desc: str = "ppl",
) -> PerplexityResult:
    """Perplexity of `model` on the 1-D token stream `tokens` (see the module doc for the recipe).

    Raises ValueError when the stream is shorter than one window.
    """
    tokens = np.asarray(tokens).reshape(-1)
    stride = context if not stride else stride
    windows = plan_windows(len(tokens), context, stride, max_windows)
    if not windows:
        raise ValueError(f"need at least {context} tokens for one window, have {len(tokens)}")
    vocab = _vocab_size(model)
    if vocab is not None and int(tokens.max()) >= vocab:
        raise ValueError(f"token id {int(tokens.max())} >= model vocab size {vocab}: data tokenised with another tokenizer")
    model.eval()
    nll_sum, n_scored = 0.0, 0
    # Windows with the same n_scored are batched together (all but the first, in sliding mode).
    groups: dict[int, list[Window]] = {}
    for w in windows:
        groups.setdefault(w.n_scored, []).append(w)
    bar = tqdm(total=len(windows), desc=desc, unit="win", leave=False)
    for k, group in groups.items():
        for i in range(0, len(group), batch_size):
            batch = group[i : i + batch_size]
            ids = torch.from_numpy(np.stack([tokens[w.begin : w.end] for w in batch]).astype(np.int64)).to(device)  # (B, C)
            nll_sum += float(window_nll(model, ids, k).sum())
            n_scored += k * len(batch)
            bar.update(len(batch))
    bar.close()
    return PerplexityResult(
        ppl=math.exp(nll_sum / n_scored), nll_sum=nll_sum, n_scored=n_scored, n_windows=len(windows),
        context=context, stride=stride, n_tokens_available=len(tokens),
        method=describe(context, stride, len(windows), n_scored),
    )


def _vocab_size(model) -> int | None:
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return getattr(emb, "num_embeddings", None) or getattr(getattr(model, "config", None), "vocab_size", None)
