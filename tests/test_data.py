"""The tokenize stage: counts, EOS placement, split disjointness, determinism, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

import pipeline.tokenize_corpus
from hyena.data.corpus import TokenizeConfig, split_text_documents
from hyena.data.tokens import build_token_dataset, load_manifest, load_tokens
from pipeline.tokenize_corpus import app

N_DOCS = 60
CONTEXT = 64


def owt_docs(path, n):
    with open(path) as f:
        return [json.loads(line)["text"] for _, line in zip(range(n), f, strict=False)]


def small_params(corpus, **kw) -> TokenizeConfig:
    base = dict(corpus=str(corpus), max_documents=N_DOCS, context=CONTEXT, val_fraction=0.1, seed=3, batch_size=16)
    return TokenizeConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def owt_tokens(tmp_path_factory, owt_jsonl, pythia_tokenizer, pythia_dir):
    out = tmp_path_factory.mktemp("tok") / "tokens"
    build_token_dataset(small_params(owt_jsonl), pythia_tokenizer, str(pythia_dir), out)
    return out


def test_counts_eos_and_packing_match_per_document_tokenisation(owt_tokens, owt_jsonl, pythia_tokenizer):
    manifest = load_manifest(owt_tokens)
    docs = owt_docs(owt_jsonl, N_DOCS)
    eos = pythia_tokenizer.eos_token_id
    assert manifest["documents"] == {"read": N_DOCS, "skipped_empty": 0, "used": N_DOCS}
    assert manifest["tokenizer"]["eos_id"] == eos
    for split in ("train", "val"):
        info = manifest["splits"][split]
        order = np.load(owt_tokens / f"{split}_documents.npy")
        # independent reference: one tokenizer call per document, EOS after each, concatenated
        stream = np.concatenate([np.array(pythia_tokenizer(docs[i], add_special_tokens=False)["input_ids"] + [eos])
                                 for i in order])
        rows = load_tokens(owt_tokens, split)
        assert rows.dtype == np.int32 and rows.shape == (len(stream) // CONTEXT, CONTEXT)
        assert info["tokens"] == len(stream) and info["dropped_tail_tokens"] == len(stream) % CONTEXT
        np.testing.assert_array_equal(rows.reshape(-1), stream[: rows.size])
        # EOS exactly at document ends: positions of EOS in the stream == cumulative doc lengths - 1
        ends = np.cumsum([len(pythia_tokenizer(docs[i], add_special_tokens=False)["input_ids"]) + 1 for i in order]) - 1
        np.testing.assert_array_equal(np.flatnonzero(stream == eos), ends)


def test_split_is_by_document_disjoint_and_complete(owt_tokens):
    manifest = load_manifest(owt_tokens)
    train = np.load(owt_tokens / "train_documents.npy")
    val = np.load(owt_tokens / "val_documents.npy")
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted([*train.tolist(), *val.tolist()]) == list(range(N_DOCS))
    assert len(val) == manifest["splits"]["val"]["documents"] == round(0.1 * N_DOCS)
    assert list(train) != sorted(train)  # shuffled, not source order


def test_wikitext_splits_on_top_level_headings(wikitext_raw):
    text = wikitext_raw.read_text()
    docs = split_text_documents(text, "auto")
    headings = [line for line in text.split("\n")
                if line.startswith(" = ") and line.endswith(" = ") and not line.startswith(" = = ")]
    assert len(docs) == len(headings) > 10
    assert all(d.split("\n", 1)[0] in headings for d in docs)
    assert "\n".join(docs) == text  # nothing lost or reordered
    assert split_text_documents(text, "file") == [text]


def test_parquet_source_gives_the_same_tokens_as_jsonl(tmp_path, owt_jsonl, pythia_tokenizer, pythia_dir, owt_tokens):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": owt_docs(owt_jsonl, N_DOCS)}), tmp_path / "owt.parquet")
    m = build_token_dataset(small_params(tmp_path / "owt.parquet"), pythia_tokenizer, str(pythia_dir), tmp_path / "t")
    ref = load_manifest(owt_tokens)
    assert m["splits"]["train"]["sha256"] == ref["splits"]["train"]["sha256"]
    assert m["splits"]["val"]["sha256"] == ref["splits"]["val"]["sha256"]


# ----------------------------------------------------------------------------- the CLI


def write_params(tmp_path, pythia_dir, out, **tokenize):
    """params with the tokenizer's model dir standing in for the materialised teacher (paths.teacher)."""
    params = {"paths": {"teacher": str(pythia_dir), "tokens": str(out)},
              "tokenize": {"max_documents": N_DOCS, "context": CONTEXT, "val_fraction": 0.1, **tokenize}}
    path = tmp_path / f"params-{out.name}.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.fixture
def fast_tokenizer(monkeypatch, pythia_tokenizer):
    """The CLI's tokenizer load, served from the session fixture (the stage code path is unchanged)."""
    monkeypatch.setattr(pipeline.tokenize_corpus, "load_tokenizer", lambda source: pythia_tokenizer)


def test_cli_is_deterministic_byte_identical(tmp_path, owt_jsonl, pythia_dir, fast_tokenizer):
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        params = write_params(tmp_path, pythia_dir, out, corpus=str(owt_jsonl))
        result = CliRunner().invoke(app, ["--params", str(params)])
        assert result.exit_code == 0, result.output
    files = sorted(p.name for p in outs[0].iterdir())
    assert files == sorted(p.name for p in outs[1].iterdir()) and "manifest.json" in files
    for name in files:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name


BAD_INPUTS = {
    # case: (corpus file content or None for a missing file, extra params, words the one-line error must contain)
    "missing corpus": (None, {}, ["not found", "tokenize.corpus"]),
    "empty corpus": (b"", {}, ["no non-empty documents", "tokenize.corpus"]),
    "whitespace-only documents": (b'{"text": "  "}\n{"text": "\\n"}\n', {}, ["no non-empty documents"]),
    "jsonl without the text field": (b'{"body": "hello"}\n', {}, ["line 1", "'text'", "tokenize.text_field"]),
    "undecodable bytes": ('{"text": "caf\u00e9"}\n'.encode("latin-1"), {}, ["undecodable", "UTF-8", "line 1"]),
    "context over max positions": (b'{"text": "hello"}\n', {"context": 4096}, ["tokenize.context", "2048"]),
    "val split takes everything": (b'{"text": "a b"}\n', {"min_val_documents": 5}, ["val_fraction"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_cli_bad_input_is_one_line_error_with_no_output(case, tmp_path, pythia_dir, fast_tokenizer):
    content, extra, words = BAD_INPUTS[case]
    corpus = tmp_path / "corpus.jsonl"
    if content is not None:
        corpus.write_bytes(content)
    out = tmp_path / "tokens"
    params = write_params(tmp_path, pythia_dir, out, corpus=str(corpus), **extra)
    result = CliRunner().invoke(app, ["--params", str(params)])
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    # progress-bar lines may precede it; the error itself is exactly one line, the last
    errors = [line for line in result.stderr.strip().splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.strip().endswith(errors[0]), result.stderr
    for word in words:
        assert word in errors[0], errors[0]
    assert str(corpus) in errors[0] or "tokenize." in errors[0]  # names the file or the param
    assert not out.exists()
    assert not any(p.name.startswith(".tokens.tmp") for p in tmp_path.iterdir())
