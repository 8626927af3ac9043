"""Perplexity by position inside long windows: does a model gain from context as its teacher does?

Each document of the source (e.g. a novel) is tokenised on its own, without special tokens, and
cut into non-overlapping windows of `context` tokens. The windows are shared out round-robin over
the documents, so that each book contributes, and each document's share is spread evenly over its
length (the centres of equal parts), so that no single passage dominates a bucket: a Project
Gutenberg file opens with ~3K tokens of licence text that a web-trained teacher has all but
memorised, and a curve of first windows measures that memory rather than the use of context. Token t of a window (0-based) is predicted from the t tokens before it in the same
window, so its position is t; the first token is not scored. Positions fall into doubling buckets

    [1, b), [b, 2b), [2b, 4b), ..., [.., context)        b = first_bucket

and each bucket's perplexity is exp(mean NLL over the tokens of every window in it). All models
score the same windows when they share a tokenizer. A student/teacher ratio per bucket removes
most of the text's own difficulty, which varies with position: that ratio is the curve to read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from hyena.core.config import Config, param
from hyena.evaluate import streams
from hyena.evaluate.streams import DatasetSource


@dataclass
class PositionsConfig(Config):
    """params.yaml `eval.positions`: the perplexity-by-position curve on long documents."""

    SECTION = "eval.positions"

    source: str = param("../shared/data/gutenberg", "long documents (one per file): a local .txt file, directory or "
                                                    "glob, or .jsonl (a local source belongs in the eval stage's deps)")
    text_field: str = param("text", "jsonl field holding each document")
    context: int = param(8192, "window length in tokens, the last position scored (0: no curve)", ge=0)
    windows: int = param(4, "windows scored per model, shared over the documents and spread over each (4 x 8,192 "
                            "tokens: 16K scored tokens in the 4K-8K bucket, 1K in 0-256)", ge=1)
    first_bucket: int = param(256, "positions [1, first_bucket) form the first bucket; each next one doubles", ge=2)
    skip_models: list[str] = param([], "eval.models names scored without the curve (others are ignored: an "
                                       "experiment may drop a model): each saves its 8K forwards (~1 min a "
                                       "student on 2 CPU cores)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.context and self.context <= self.first_bucket:
            raise ValueError(f"eval.positions.context ({self.context}) must exceed first_bucket ({self.first_bucket})")


def buckets(context: int, first: int) -> list[tuple[int, int]]:
    """Doubling position buckets [lo, hi) covering 1 .. context-1."""
    out, lo, hi = [], 1, first
    while lo < context:
        out.append((lo, min(hi, context)))
        lo, hi = hi, hi * 2
    return out


def bucket_label(lo: int, hi: int) -> str:
    def k(n: int) -> str:
        return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n)

    return f"{k(0 if lo == 1 else lo)}-{k(hi)}"


def bucket_start(label: str) -> int:
    """bucket_label's first position back: "4K-8K" -> 4096, "0-256" -> 0 (to order labels that
    arrive sorted as text, as in `dvc exp show`)."""
    lo = label.split("-")[0]
    return int(lo[:-1]) * 1024 if lo.endswith("K") else int(lo)


def read_documents(cfg: PositionsConfig) -> list[str]:
    """The source's non-empty documents (a text file is one document)."""
    return streams.read_documents("eval.positions", DatasetSource(cfg.source, text_field=cfg.text_field))


def cut_windows(doc_tokens: list[np.ndarray], context: int, n_windows: int) -> np.ndarray:
    """(W, context) int64 windows: W shared round-robin over the documents, each document's share
    taken at the centres of equal parts of its non-overlapping windows (module docstring)."""
    per_doc = [[ids[i : i + context] for i in range(0, len(ids) - context + 1, context)] for ids in doc_tokens]
    share = [0] * len(per_doc)
    for rank in range(max((len(w) for w in per_doc), default=0)):
        for d, w in enumerate(per_doc):
            if rank < len(w) and sum(share) < n_windows:
                share[d] += 1
    picked = [[w[int((i + 0.5) * len(w) / k)] for i in range(k)] for w, k in zip(per_doc, share, strict=True)]
    out: list[np.ndarray] = []
    for rank in range(max(share, default=0)):  # interleaved, as shared out
        out += [p[rank] for p in picked if rank < len(p)]
    if not out:
        longest = max((len(ids) for ids in doc_tokens), default=0)
        raise ValueError(f"eval.positions: no document has {context} tokens (longest: {longest}): "
                         "lower eval.positions.context or use longer documents")
    return np.stack(out[:n_windows]).astype(np.int64)


@torch.no_grad()
def position_nll(model, windows: np.ndarray, device: str | torch.device = "cpu", desc: str = "positions") -> np.ndarray:
    """Summed NLL over the windows of every predicted position: (W, C) ids -> (C,) fp64, entry
    0 unused (the first token is not predicted). One window per forward (8K logits are ~1.6 GB)."""
    total = np.zeros(windows.shape[1], dtype=np.float64)
    for row in tqdm(windows, desc=desc, unit="win", leave=False):
        ids = torch.from_numpy(row)[None].to(device)  # (1, C)
        logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()  # (C-1, V)
        nll = F.cross_entropy(logits, ids[0, 1:], reduction="none")  # (C-1,)
        total[1:] += nll.double().cpu().numpy()
        del logits
    return total


def bucket_perplexities(nll: np.ndarray, n_windows: int, first: int) -> list[dict]:
    """[{lo, hi, label, ppl, n_scored}] from `position_nll`'s per-position sums."""
    rows = []
    for lo, hi in buckets(len(nll), first):
        n = (hi - lo) * n_windows
        rows.append({"lo": lo, "hi": hi, "label": bucket_label(lo, hi), "n_scored": n,
                     "ppl": math.exp(float(nll[lo:hi].sum()) / n)})
    return rows


def model_positions(model, windows: np.ndarray, cfg: PositionsConfig, device, name: str) -> dict:
    """{"buckets": [...]} for one model, or {"na": reason} when it cannot take the window."""
    nll = position_nll(model, windows, device, desc=f"{name} positions ctx{windows.shape[1]}")
    return {"windows": int(windows.shape[0]), "context": int(windows.shape[1]),
            "buckets": bucket_perplexities(nll, windows.shape[0], cfg.first_bucket)}
