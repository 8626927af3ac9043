"""Corpora: which documents a `tokenize` params section reads, from a local file, directory or glob
(.jsonl, .txt/.raw, .parquet) or a streamed HF dataset; `TokenizeConfig` is that section.
Tokenising, splitting and packing them is `hyena.data.tokens`.

Plain-text files (`.txt`, `.raw`): `txt_split="auto"` starts a new document at every WikiText
top-level heading line (` = Title = `) when the file has such lines, and otherwise treats the
whole file as one document; "file", "wikitext" and "blank_lines" force one rule.
"""

from __future__ import annotations

import glob
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hyena.core.config import Config, param

JSONL_SUFFIXES = (".jsonl",)
TEXT_SUFFIXES = (".txt", ".raw", ".text")
PARQUET_SUFFIXES = (".parquet",)
LOCAL_SUFFIXES = JSONL_SUFFIXES + TEXT_SUFFIXES + PARQUET_SUFFIXES
WIKITEXT_HEADING = re.compile(r"^ = [^=].* = $")  # level-1 heading; ' = = Sub = = ' is level 2


class CorpusError(ValueError):
    """Bad corpus or tokenize params; the message names the file/param and the fix."""


@dataclass
class TokenizeConfig(Config):
    """params.yaml `tokenize`: which corpus, and how it becomes packed rows of `context` tokens."""
    SECTION = "tokenize"

    corpus: str = param("Skylion007/openwebtext", "HF dataset id (streamed), local file, directory or glob (.jsonl/.txt/.parquet)")
    text_field: str = param("text", "jsonl/parquet/HF field holding each document")
    hf_split: str = param("train", "split to stream for HF dataset ids")
    hf_config: str | None = param(None, "dataset config name for HF dataset ids")
    max_documents: int | None = param(2_000_000, "read at most this many documents (null: all; paper: 2M)", ge=1)
    txt_split: Literal["auto", "file", "wikitext", "blank_lines"] = param(
        "auto", "how a .txt file splits into documents: auto | file | wikitext | blank_lines")
    context: int = param(1024, "tokens per packed training sequence (paper: 1024)", ge=2)
    val_fraction: float = param(0.001, "share of documents held out for validation (paper: 0.1%)", ge=0.0, lt=1.0)
    min_val_documents: int = param(1, "but at least this many", ge=0)
    seed: int = param(0, "document shuffle that decides the split")
    eos_token: str | None = param(None, "separator appended after each document (null: the tokenizer's EOS)")
    batch_size: int = param(256, "documents per batched tokenizer call", ge=1)


# ----------------------------------------------------------------------------- corpus reading


def resolve_corpus(corpus: str) -> list[Path] | None:
    """The local files a corpus spec names (sorted), or None when it is a Hugging Face dataset id.

    A spec is local when it contains glob characters, exists on disk, starts like a path
    ('/', '.', '~') or ends in a known suffix; anything else (e.g. 'Skylion007/openwebtext')
    is a hub id.
    """
    spec = str(corpus)
    if any(c in spec for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        if not files:
            raise CorpusError(f"corpus glob {spec!r} matched no files: fix tokenize.corpus")
        return files
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in LOCAL_SUFFIXES)
        if not files:
            raise CorpusError(f"corpus directory {spec} holds no {'/'.join(LOCAL_SUFFIXES)} files: fix tokenize.corpus")
        return files
    if path.is_file():
        return [path]
    if spec.startswith(("/", ".", "~")) or path.suffix in LOCAL_SUFFIXES or spec.count("/") > 1:
        raise CorpusError(f"corpus file not found: {spec} (fix tokenize.corpus)")
    return None


def _decode(raw: bytes, path: Path, line: int | None = None) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        where = f"line {line}, " if line is not None else ""
        raise CorpusError(
            f"{path}: undecodable bytes ({where}byte {err.start}): not UTF-8; "
            "re-encode the corpus as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None


def _jsonl_documents(path: Path, field: str) -> Iterator[str]:
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            line = _decode(raw, path, n).strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise CorpusError(f"{path} line {n}: invalid JSON ({err.msg}); fix or remove the line") from None
            if not isinstance(record, dict) or field not in record:
                keys = ", ".join(sorted(record)) if isinstance(record, dict) else type(record).__name__
                raise CorpusError(
                    f"{path} line {n}: no {field!r} field (has: {keys}); set tokenize.text_field to the text field"
                )
            text = record[field]
            if not isinstance(text, str):
                raise CorpusError(f"{path} line {n}: field {field!r} is {type(text).__name__}, not text; fix tokenize.text_field")
            yield text


def split_text_documents(text: str, mode: str = "auto") -> list[str]:
    """Documents of one plain-text file under `mode` (see the module docstring)."""
    lines = text.split("\n")
    if mode == "auto":
        mode = "wikitext" if any(WIKITEXT_HEADING.match(line) for line in lines) else "file"
    if mode == "file":
        return [text]
    if mode == "blank_lines":
        return [d for d in re.split(r"\n\s*\n", text)]
    docs: list[list[str]] = [[]]
    for line in lines:
        if WIKITEXT_HEADING.match(line) and any(s.strip() for s in docs[-1]):
            docs.append([])
        docs[-1].append(line)
    return ["\n".join(d) for d in docs]


def _text_documents(path: Path, mode: str) -> Iterator[str]:
    yield from split_text_documents(_decode(path.read_bytes(), path), mode)


def _parquet_documents(path: Path, field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    if field not in pf.schema_arrow.names:
        raise CorpusError(
            f"{path}: no {field!r} column (has: {', '.join(pf.schema_arrow.names)}); set tokenize.text_field"
        )
    for batch in pf.iter_batches(columns=[field], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if text is not None and not isinstance(text, str):
                raise CorpusError(f"{path}: column {field!r} holds {type(text).__name__}, not text; fix tokenize.text_field")
            yield text or ""


def _hf_documents(p: TokenizeConfig) -> Iterator[str]:
    import datasets

    try:
        ds = datasets.load_dataset(p.corpus, p.hf_config, split=p.hf_split, streaming=True)
        for record in ds:
            if p.text_field not in record:
                raise CorpusError(
                    f"HF dataset {p.corpus}: no {p.text_field!r} field (has: {', '.join(record)}); set tokenize.text_field"
                )
            yield record[p.text_field]
    except CorpusError:
        raise
    except Exception as err:  # noqa: BLE001 - datasets raises many kinds; all mean "cannot read it"
        raise CorpusError(
            f"could not stream HF dataset {p.corpus!r} ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
            "check tokenize.corpus/hf_split/hf_config, or pass a local .jsonl/.txt/.parquet file"
        ) from None


def iter_documents(p: TokenizeConfig) -> Iterator[str]:
    """Every document of the corpus in source order (files sorted by path), up to max_documents.

    Empty (whitespace-only) documents are yielded too; the caller skips and counts them.
    """
    files = resolve_corpus(p.corpus)
    if files is None:
        stream: Iterable[str] = _hf_documents(p)
    else:
        stream = (doc for f in files for doc in _file_documents(f, p))
    for n, doc in enumerate(stream):
        if p.max_documents is not None and n >= p.max_documents:
            return
        yield doc


def _file_documents(path: Path, p: TokenizeConfig) -> Iterator[str]:
    if path.suffix in JSONL_SUFFIXES:
        return _jsonl_documents(path, p.text_field)
    if path.suffix in PARQUET_SUFFIXES:
        return _parquet_documents(path, p.text_field)
    if path.suffix in TEXT_SUFFIXES:
        return _text_documents(path, p.txt_split)
    raise CorpusError(f"{path}: unsupported corpus file type {path.suffix!r}; use {'/'.join(LOCAL_SUFFIXES)}")
