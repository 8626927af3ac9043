"""Token rows and their manifest are checked against the manifest's hashes: damaged ids become one
line naming the file and the fix, instead of `IndexError: index out of range in self` inside training."""

from __future__ import annotations

import json
import shutil

import numpy as np
import yaml
from conftest import run_stage


def project_with_tokens(small_project, tmp_path):
    params = yaml.safe_load((small_project / "params.yaml").read_text())
    tokens = tmp_path / "tokens"
    shutil.copytree(params["paths"]["tokens"], tokens)
    params["paths"]["tokens"] = str(tokens)
    for key in ("students", "reports", "checkpoints"):
        params["paths"][key] = str(tmp_path / key)
    shutil.copytree(small_project / "data/students", tmp_path / "students")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path / "params.yaml", tokens


def one_error_line(result, *words):
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and all(w in lines[0] for w in words), result.stderr
    assert "allow_pickle" not in result.stderr


def test_overwritten_token_ids_are_named_before_training(small_project, tmp_path):
    params, tokens = project_with_tokens(small_project, tmp_path)
    data = bytearray((tokens / "train.npy").read_bytes())
    data[200:600] = b"\xff" * 400  # ids far outside the vocabulary
    (tokens / "train.npy").write_bytes(bytes(data))
    one_error_line(run_stage(params, "finetune"), "train.npy", "sha256", "tokenize")


def test_a_train_npy_that_is_not_an_array_is_named_without_an_unsafe_fix(small_project, tmp_path):
    params, tokens = project_with_tokens(small_project, tmp_path)
    np.save(tokens / "train.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    one_error_line(run_stage(params, "finetune"), "train.npy", "tokenize")


def test_a_hand_edited_manifest_is_refused(small_project, tmp_path):
    params, tokens = project_with_tokens(small_project, tmp_path)
    manifest = json.loads((tokens / "manifest.json").read_text())
    manifest["splits"]["train"]["sequences"] += 5
    (tokens / "manifest.json").write_text(json.dumps(manifest))
    one_error_line(run_stage(params, "finetune"), "manifest.json", "content_hash", "tokenize")
