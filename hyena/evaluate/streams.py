"""Token streams the perplexity tables are computed on: one per entry of `eval.datasets`.

Each entry maps a report name to a `DatasetSource`:

* `tokenize:val`: the `tokenize` stage's `val.npy` (n_sequences, context) int32 rows, read back
  in order and concatenated into one stream (the rows are consecutive chunks of the tokenised
  documents, so re-windowing them at another context is meaningful). Teacher tokens: every
  model is scored on the same ids.
* a local `.txt`/`.raw`/`.jsonl`/`.parquet` file, directory or glob, or a Hugging Face dataset
  id (split `hf_split`, config `hf_config`, documents in `text_field`): read with the tokenize
  stage's reader (`hyena.data.iter_documents`; a text file is one document), documents joined
  by a blank line ("\\n\\n", the Hugging Face perplexity recipe), and tokenised as ONE stream with
  each model's own tokenizer, without special tokens. A WikiText `wiki.test.raw` file is thus
  scored exactly as it stands.

This is token-level perplexity: lm-eval's own `wikitext` task reports word-level perplexity per
document, which is a different number.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import transformers

from hyena.core.config import Config, param
from hyena.data.corpus import CorpusError, TokenizeConfig, iter_documents, resolve_corpus
from hyena.data.tokens import load_tokens

TOKENIZED_VAL = "tokenize:val"
NAME = re.compile(r"[A-Za-z0-9_.-]+")  # report names become metric keys: ppl/<name>/<model>


@dataclass
class DatasetSource(Config):
    """One perplexity dataset of params.yaml `eval.datasets` (a plain string is `source` alone)."""
    SECTION = "eval.datasets"

    source: str = param(help="tokenize:val (the tokenize stage's validation split) | a local .txt/.raw/.jsonl/"
                             ".parquet file, directory or glob | an HF dataset id")
    text_field: str = param("text", "jsonl/parquet/HF field holding each document")
    hf_split: str = param("test", "split of an HF dataset id")
    hf_config: str | None = param(None, "config of an HF dataset id")
    max_documents: int | None = param(None, "read at most this many documents (null: all)", ge=1)

    @property
    def tokenized(self) -> bool:
        return self.source == TOKENIZED_VAL

    def local_files(self) -> list[Path] | None:
        """The files a local source names (None for the tokenize split and HF ids)."""
        return None if self.tokenized else resolve_corpus(self.source)


class DatasetError(ValueError):
    """A perplexity dataset that cannot be read; the message names it and the key to fix."""


def _for_key(message: str, key: str) -> str:
    """A message of the tokenize stage's reader, reworded for the params key that named the source."""
    return f"{key}: " + message.replace("tokenize.corpus", f"{key}.source").replace("tokenize.", f"{key}.")


def load_owt_val(tokens_dir: str | Path) -> np.ndarray:
    """The validation split of the tokenize stage as one 1-D int stream (memory-mapped)."""
    path = Path(tokens_dir) / "val.npy"
    if not path.is_file():
        raise FileNotFoundError(f"OWT validation tokens not found: {path} (run the tokenize stage or set paths.tokens)")
    return np.asarray(load_tokens(tokens_dir, "val")).reshape(-1)


def read_documents(key: str, src: DatasetSource) -> list[str]:
    """The non-empty documents of a local or HF source (a text file is one document); errors name
    `key`, the params key of the source (e.g. eval.datasets.wikitext)."""
    reader = TokenizeConfig(corpus=src.source, text_field=src.text_field, hf_split=src.hf_split,
                            hf_config=src.hf_config, max_documents=src.max_documents, txt_split="file")
    try:
        docs = [doc for doc in iter_documents(reader) if doc.strip()]
    except CorpusError as err:
        raise DatasetError(_for_key(str(err), key)) from None
    if not docs:
        raise DatasetError(f"{key}: {src.source} holds no text: fix {key}.source")
    return docs


def read_text(name: str, src: DatasetSource) -> str:
    """The whole text of a local or HF source: its non-empty documents joined by "\\n\\n"."""
    return "\n\n".join(read_documents(f"eval.datasets.{name}", src))


def describe(src: DatasetSource, text: str) -> str:
    """Where a text source came from, for the report (with a hash of exactly what was scored)."""
    files = src.local_files()
    if files is None:
        where = f"HF dataset {src.source} ({src.hf_config or 'default'} config, {src.hf_split} split, field {src.text_field!r})"
    elif len(files) == 1 and str(files[0]) == src.source:
        where = f"{src.source}"
    else:
        where = f"{src.source} ({len(files)} files)"
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return f"{where}, {len(text):,} characters (sha256 {digest})"


def tokenize_stream(tokenizer, text: str) -> np.ndarray:
    """One int32 stream for the whole text, without BOS/EOS (tokenised in one call, so BPE
    merges across line breaks are the tokenizer's own)."""
    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # silence "sequence longer than model_max_length"
    try:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    finally:
        transformers.logging.set_verbosity(level)
    return np.asarray(ids, dtype=np.int32)
