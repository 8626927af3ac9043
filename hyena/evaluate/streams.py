"""Token streams the perplexity tables are computed on.

* OpenWebText validation: the `tokenize` stage's `val.npy` (n_sequences, context) int32 rows,
  read back in order and concatenated into one stream (the rows are consecutive chunks of the
  tokenised documents, so re-windowing them at another context is meaningful).
* WikiText test: the raw text (a local `wiki.test.raw`, or the hub's `wikitext` test split as
  `hub:wikitext/wikitext-103-raw-v1`), tokenised as ONE stream with the model's tokenizer
  without special tokens.  Documents are joined as in the file (hub rows joined by "\\n\\n",
  the Hugging Face perplexity recipe).  This is token-level perplexity: lm-eval's own
  `wikitext` task reports word-level perplexity per document, which is a different number.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def load_owt_val(tokens_dir: str | Path) -> np.ndarray:
    """The validation split of the tokenize stage as one 1-D int stream (memory-mapped)."""
    from hyena.data import load_tokens

    path = Path(tokens_dir) / "val.npy"
    if not path.is_file():
        raise FileNotFoundError(f"OWT validation tokens not found: {path} (run the tokenize stage or set paths.tokens)")
    return np.asarray(load_tokens(tokens_dir, "val")).reshape(-1)


def read_wikitext(source: str) -> str:
    """WikiText test text from a local raw file or `hub:<path>/<config>` (datasets.load_dataset)."""
    if source.startswith("hub:"):
        import datasets

        path, _, name = source[4:].partition("/")
        rows = datasets.load_dataset(path, name or None, split="test")["text"]
        return "\n\n".join(rows)
    p = Path(source)
    if not p.is_file():
        raise FileNotFoundError(
            f"WikiText test file not found: {source} (set eval.wikitext to wiki.test.raw or hub:wikitext/wikitext-103-raw-v1)"
        )
    return p.read_text(encoding="utf-8")


def tokenize_stream(tokenizer, text: str) -> np.ndarray:
    """One int32 stream for the whole text, without BOS/EOS (tokenised in one call, so BPE
    merges across line breaks are the tokenizer's own)."""
    import transformers

    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # silence "sequence longer than model_max_length"
    try:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    finally:
        transformers.logging.set_verbosity(level)
    return np.asarray(ids, dtype=np.int32)
