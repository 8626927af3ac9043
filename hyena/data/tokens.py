"""Token data: read a corpus, tokenise it with the teacher's tokenizer, split by document, pack.

Layout written by `build_token_dataset` (one directory, written atomically):

    train.npy, val.npy                 int32 (n_sequences, context): packed token rows
    train_documents.npy, val_documents.npy
                                       int64: source document indices in packing order
    manifest.json                      counts, tokenizer identity, source, params, file hashes,
                                       and `content_hash` (sha256 of the rest of the manifest)

Splitting and packing: the N non-empty documents are permuted with `numpy.random.default_rng(seed)`;
the first n_val = max(min_val_documents, round(val_fraction * N)) documents of the permutation are
the validation split, the rest training. Each split's documents, in permutation order, are
tokenised (no special tokens), followed by one EOS token each, concatenated into one stream
t_0 t_1 ... t_{T-1}, and cut into rows of `context` tokens: row r = t[r*C : (r+1)*C] for
r < floor(T / C). The ragged tail of T mod C tokens is dropped (reported in the manifest).
A split therefore never shares a document with the other, while a row may span documents.
The documents come from `hyena.data.corpus`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from hyena.core.io import CorruptInputError, atomic_dir, claim_output, file_sha256
from hyena.data.corpus import (
    CorpusError,
    TokenizeConfig,
    iter_documents,
    resolve_corpus,
    split_text_documents,
)
from hyena.teachers import has_tokenizer, load_tokenizer

STAGE = "tokenize"  # the stage whose marker a token directory carries (hyena.core.io.atomic_dir)
MANIFEST = "manifest.json"
SPLITS = ("train", "val")
FORMAT = "hyena-tokens/1"

# ----------------------------------------------------------------------------- tokenising


def vocab_sha256(tokenizer) -> str:
    """A hash of a tokenizer's whole vocabulary (token -> id): equal hashes, equal token ids."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()


def tokenizer_sha256(tokenizer) -> str:
    """A hash of everything that decides a tokenizer's ids for a text (a fast tokenizer's whole
    definition: normaliser, pre-tokeniser, model, added tokens), or of its vocabulary when it has
    no such definition. Models that share a tokenizer from different directories hash equal."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return vocab_sha256(tokenizer)
    return hashlib.sha256(backend.to_str().encode()).hexdigest()


def check_tokenizer(tokens_dir: str | Path, model_dir: str | Path, whose: str) -> None:
    """Refuse token rows made with another tokenizer than the one in `model_dir` (the model
    `whose` reads them): ids below the vocab size would pass and mean other words. Nothing to
    compare (no manifest record, a model directory without a tokenizer) passes."""
    manifest = Path(tokens_dir) / MANIFEST
    made_with = json.loads(manifest.read_text()).get("tokenizer", {}) if manifest.is_file() else {}
    if not made_with.get("vocab_sha256") or not has_tokenizer(model_dir):
        return
    tokenizer = load_tokenizer(str(model_dir))
    if made_with["vocab_sha256"] != vocab_sha256(tokenizer):
        raise CorpusError(
            f"the tokens in {tokens_dir} were made with another tokenizer ({made_with.get('name_or_path')}, "
            f"{made_with.get('vocab_size')} tokens) than {whose} in {model_dir} ({len(tokenizer)} tokens): "
            "rerun the tokenize stage with this teacher"
        )


def tokenizer_identity(tokenizer, source: str, eos_id: int) -> dict:
    """What identifies a tokenizer: class, path, vocab size, EOS, and a hash of the whole vocab."""
    vocab_hash = vocab_sha256(tokenizer)
    return {
        "teacher_source": source,
        "name_or_path": str(tokenizer.name_or_path),
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "eos_token": tokenizer.convert_ids_to_tokens(eos_id),
        "eos_id": int(eos_id),
        "vocab_sha256": vocab_hash,
    }


def resolve_eos_id(tokenizer, eos_token: str | None) -> int:
    if eos_token is None:
        if tokenizer.eos_token_id is None:
            raise CorpusError("the teacher tokenizer has no EOS token: set tokenize.eos_token to a separator token")
        return int(tokenizer.eos_token_id)
    eos_id = tokenizer.convert_tokens_to_ids(eos_token)
    if eos_id is None or (eos_id == tokenizer.unk_token_id and eos_token != tokenizer.unk_token):
        raise CorpusError(f"tokenize.eos_token {eos_token!r} is not in the teacher's vocabulary; fix it or set null")
    return int(eos_id)


def _batches(items: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def tokenize_documents(tokenizer, documents: Iterable[str], eos_id: int, batch_size: int = 256):
    """Tokenise non-empty documents in batched calls; EOS appended to each.

    Returns (tokens (T,) int32, offsets (N+1,) int64, n_skipped_empty): document i is
    tokens[offsets[i]:offsets[i+1]] and ends with eos_id.
    """
    from transformers.utils import logging as hf_logging

    chunks: list[np.ndarray] = []
    lengths: list[int] = []
    skipped = 0
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # silences "sequence longer than model max length": we pack anyway
    try:
        with tqdm(desc="tokenize", unit="doc") as bar:  # closed (newline) even when reading fails
            for batch in _batches(documents, batch_size):
                texts = [t for t in batch if t.strip()]
                skipped += len(batch) - len(texts)
                if texts:
                    ids = tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
                    for seq in ids:
                        chunks.append(np.asarray([*seq, eos_id], dtype=np.int32))
                        lengths.append(len(seq) + 1)
                bar.update(len(batch))
    finally:
        hf_logging.set_verbosity(verbosity)
    tokens = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int32)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return tokens, offsets, skipped


def split_documents(n_docs: int, val_fraction: float, min_val_documents: int, seed: int):
    """(train_docs, val_docs): disjoint index arrays in seeded-shuffle order covering range(n_docs)."""
    order = np.random.default_rng(seed).permutation(n_docs)
    n_val = max(min_val_documents, int(round(val_fraction * n_docs)))
    if n_val >= n_docs:
        raise CorpusError(
            f"the validation split would take {n_val} of {n_docs} documents, leaving none for training: "
            "lower tokenize.val_fraction / min_val_documents or use a larger corpus"
        )
    return order[n_val:].astype(np.int64), order[:n_val].astype(np.int64)


def pack_documents(tokens: np.ndarray, offsets: np.ndarray, docs: np.ndarray, context: int):
    """Rows (n, context) int32 of the concatenated documents `docs`; and the dropped tail length."""
    pieces = [tokens[offsets[i] : offsets[i + 1]] for i in docs]
    stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)  # (T,)
    n_rows = len(stream) // context
    return stream[: n_rows * context].reshape(n_rows, context), len(stream) - n_rows * context


# ----------------------------------------------------------------------------- the dataset


def _source_record(p: TokenizeConfig) -> dict:
    files = resolve_corpus(p.corpus)
    if files is None:
        return {"kind": "huggingface", "dataset": p.corpus, "split": p.hf_split, "config": p.hf_config}
    return {
        "kind": "local",
        "spec": p.corpus,
        "files": [{"path": str(f), "bytes": f.stat().st_size, "sha256": file_sha256(f)} for f in files],
    }


def content_hash(manifest: dict) -> str:
    """sha256 of the canonical JSON of a manifest without its own `content_hash` field."""
    body = {k: v for k, v in manifest.items() if k != "content_hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def build_token_dataset(p: TokenizeConfig, tokenizer, teacher_source: str, out_dir: str | Path,
                        max_positions: int | None = None) -> dict:
    """Tokenise, split, pack and write the token dataset to `out_dir` atomically; returns the manifest."""
    if max_positions is not None and p.context > max_positions:
        raise CorpusError(
            f"tokenize.context {p.context} exceeds the teacher's maximum positions {max_positions} "
            f"({teacher_source}): lower tokenize.context"
        )
    claim_output(out_dir, STAGE)  # a foreign directory is refused before the corpus is read
    source = _source_record(p)  # also fails early on a missing corpus
    eos_id = resolve_eos_id(tokenizer, p.eos_token)
    tokens, offsets, skipped = tokenize_documents(tokenizer, iter_documents(p), eos_id, p.batch_size)
    n_docs = len(offsets) - 1
    if n_docs == 0:
        raise CorpusError(f"corpus {p.corpus} holds no non-empty documents: fix tokenize.corpus")
    train_docs, val_docs = split_documents(n_docs, p.val_fraction, p.min_val_documents, p.seed)
    manifest: dict = {
        "format": FORMAT,
        "source": source,
        "tokenizer": tokenizer_identity(tokenizer, teacher_source, eos_id),
        "params": asdict(p),
        "documents": {"read": n_docs + skipped, "skipped_empty": skipped, "used": n_docs},
        "packing": (
            "documents in seeded-shuffle order, EOS appended after each, concatenated and cut into "
            "rows of `context` tokens; the ragged tail of each split is dropped"
        ),
        "splits": {},
    }
    with atomic_dir(out_dir, STAGE) as tmp:
        for split, docs in (("train", train_docs), ("val", val_docs)):
            rows, dropped = pack_documents(tokens, offsets, docs, p.context)
            if split == "train" and len(rows) == 0:
                raise CorpusError(
                    f"the training split has {dropped} tokens, fewer than tokenize.context {p.context}: "
                    "use a larger corpus or a smaller context"
                )
            np.save(tmp / f"{split}.npy", rows)
            np.save(tmp / f"{split}_documents.npy", docs)
            manifest["splits"][split] = {
                "file": f"{split}.npy",
                "documents_file": f"{split}_documents.npy",
                "shape": list(rows.shape),
                "dtype": "int32",
                "documents": int(len(docs)),
                "tokens": int(offsets[docs + 1].sum() - offsets[docs].sum()),
                "sequences": int(rows.shape[0]),
                "packed_tokens": int(rows.size),
                "dropped_tail_tokens": int(dropped),
                "sha256": file_sha256(tmp / f"{split}.npy"),
                "documents_sha256": file_sha256(tmp / f"{split}_documents.npy"),
            }
        manifest["content_hash"] = content_hash(manifest)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


RETOKENIZE = "delete it and rerun the tokenize stage (dvc repro tokenize)"
_verified: dict[tuple, str] = {}  # (path, size, mtime_ns) -> sha256 already checked in this process


def load_manifest(tokens_dir: str | Path) -> dict:
    """The manifest, checked against its own `content_hash` (a hand edit is refused, not trusted)."""
    path = Path(tokens_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"token manifest not found: {path} (run the tokenize stage first)")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as err:
        raise CorruptInputError(f"{path} is not valid JSON ({err}): {RETOKENIZE}") from None
    if not isinstance(manifest, dict) or manifest.get("content_hash") != content_hash(manifest):
        raise CorruptInputError(f"{path} does not match its content_hash (edited or damaged since the tokenize stage "
                                f"wrote it): {RETOKENIZE}")
    return manifest


def load_tokens(tokens_dir: str | Path, split: str) -> np.ndarray:
    """The packed token rows of one split, memory-mapped: int32 (n_sequences, context), checked
    against the manifest's sha256 of the file (once per process and file version) and shape."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    path = Path(tokens_dir) / f"{split}.npy"
    if not path.is_file():
        raise FileNotFoundError(f"token file not found: {path} (run the tokenize stage first)")
    record = load_manifest(tokens_dir).get("splits", {}).get(split, {})
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if record.get("sha256") and _verified.get(key) != record["sha256"]:
        if file_sha256(path) != record["sha256"]:
            raise CorruptInputError(f"{path} does not match the sha256 in {Path(tokens_dir) / MANIFEST} (damaged or "
                                    f"replaced since the tokenize stage wrote it): {RETOKENIZE}")
        _verified[key] = record["sha256"]
    try:
        rows = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as err:  # numpy's own text suggests allow_pickle: never load a token file that way
        raise CorruptInputError(f"{path} is not a plain integer array ({str(err).split('.')[0]}): {RETOKENIZE}") from None
    if not isinstance(rows, np.ndarray) or rows.ndim != 2 or rows.dtype.kind not in "iu" or (
            record.get("shape") and list(rows.shape) != record["shape"]):
        raise CorruptInputError(f"{path} holds {getattr(rows, 'dtype', '?')} {getattr(rows, 'shape', '?')}, not the "
                                f"int32 {record.get('shape', '(n, context)')} rows its manifest records: {RETOKENIZE}")
    return rows


__all__ = [
    "CorpusError", "TokenizeConfig", "build_token_dataset", "load_tokens", "load_manifest",
    "iter_documents", "resolve_corpus", "split_text_documents", "tokenize_documents",
    "split_documents", "pack_documents", "content_hash",
]
