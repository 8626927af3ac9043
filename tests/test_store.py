"""The activation dump and store: stored layers equal a fresh forward pass, crashes resume to an
identical store, incomplete stores are refused, and `inspect --verify` finds a missing chunk."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from hyena.data.corpus import TokenizeConfig
from hyena.data.dump import DumpConfig, dump_activations
from hyena.data.store import ActivationStore, StoreIncompleteError, layer_name
from hyena.data.tokens import build_token_dataset, load_tokens
from hyena.teachers import capture_layer_outputs, load_teacher

ROOT = Path(__file__).resolve().parents[1]
PARAMS = DumpConfig(train_sequences=10, val_sequences=3, batch_size=3, chunk_sequences=4)  # chunks 4+4+2 / 3


def make_tokens(out, corpus, tokenizer, source, context):
    p = TokenizeConfig(corpus=str(corpus), max_documents=20, context=context, val_fraction=0.2, batch_size=32)
    build_token_dataset(p, tokenizer, str(source), out)
    return out


@pytest.fixture(scope="module")
def pythia_tokens(tmp_path_factory, owt_jsonl, pythia_tokenizer, pythia_dir):
    return make_tokens(tmp_path_factory.mktemp("ptok") / "tokens", owt_jsonl, pythia_tokenizer, pythia_dir, 32)


@pytest.fixture(scope="module")
def pythia_random(pythia_dir):
    """Pythia-70M's architecture with seeded random weights (no weights offline)."""
    torch.manual_seed(0)
    return load_teacher(str(pythia_dir), config_only=True)


@pytest.fixture(scope="module")
def pythia_store(tmp_path_factory, pythia_random, pythia_tokens, pythia_dir):
    out = tmp_path_factory.mktemp("pstore") / "acts.zarr"
    return dump_activations(pythia_random, pythia_tokens, out, PARAMS, str(pythia_dir), progress_bar=False)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def fresh_forward(model, tokens_dir, split, n, batch=None, chunk=None):
    """N+1 arrays (n, L, d) from a new fp32 forward: one batch, or the dump's batches (never crossing a chunk)."""
    rows = np.asarray(load_tokens(tokens_dir, split)[:n], dtype=np.int64)
    spans = [(0, n)] if batch is None else [
        (b, min(b + batch, c + chunk, n)) for c in range(0, n, chunk) for b in range(c, min(c + chunk, n), batch)]
    outs = [capture_layer_outputs(model, torch.from_numpy(rows[a:b])) for a, b in spans]
    return [torch.cat(per_layer).numpy() for per_layer in zip(*outs, strict=True)]


def assert_matches_fresh_forward(store: ActivationStore, model, tokens_dir, p: DumpConfig, exact_batches: bool):
    """Every stored layer equals a new forward pass to fp16 rounding.

    With the dump's own batches the fp32 values are the same computation, so the stored value
    must be the fp16 rounding of it: |stored - x| <= 2^-11 |x| + 2^-25 (half an ulp, subnormals
    included). With one big batch, fp32 reassociation adds noise, so the bound is looser.
    """
    for split in store.splits:
        n = store.n_sequences(split)
        fresh = fresh_forward(model, tokens_dir, split, n, *((p.batch_size, p.chunk_sequences) if exact_batches else ()))
        assert len(fresh) == store.n_layers + 1
        for k, ref in enumerate(fresh):
            stored = store.layer(split, k)[:].astype(np.float32)
            assert stored.shape == ref.shape == (n, store.seq_len, store.d_model)
            if exact_batches:
                excess = np.abs(stored - ref) - (2**-11 * np.abs(ref) + 2**-25)
                assert excess.max() <= 0, f"{split} {layer_name(k)}: off by {excess.max():.3g} beyond fp16 rounding"
            else:
                np.testing.assert_allclose(stored, ref, rtol=2**-10, atol=1e-5, err_msg=f"{split} {layer_name(k)}")


def test_pythia_random_dump_equals_fresh_forward(pythia_store, pythia_random, pythia_tokens, pythia_dir):
    store = ActivationStore.open(pythia_store.path)
    assert store.complete and store.n_layers == 6 and store.d_model == 512 and store.seq_len == 32
    assert store.layer("train", 0).chunks == (4, 32, 512) and store.layer("train", 0).dtype == np.float16
    a = store.attrs
    from hyena.data.tokens import load_manifest
    from hyena.teachers import weights_hash

    assert a["teacher"]["weights_hash"] == weights_hash(pythia_random) and a["teacher"]["source"] == str(pythia_dir)
    assert a["tokens"]["manifest_hash"] == load_manifest(pythia_tokens)["content_hash"]
    assert a["params"]["chunk_sequences"] == 4 and a["summary"]["train"]["non_finite_per_layer"] == [0] * 7
    assert store.layer("val", 3).attrs["layer"] == 3
    assert store.n_sequences("train") == 10 and store.n_sequences("val") == 3
    assert_matches_fresh_forward(store, pythia_random, pythia_tokens, PARAMS, exact_batches=True)
    assert_matches_fresh_forward(store, pythia_random, pythia_tokens, PARAMS, exact_batches=False)


def test_smollm_dump_equals_fresh_forward(tmp_path, owt_jsonl, smollm_tokenizer, smollm_teacher, smollm_gguf):
    tokens = make_tokens(tmp_path / "tokens", owt_jsonl, smollm_tokenizer, smollm_gguf, 24)
    p = DumpConfig(train_sequences=4, val_sequences=2, batch_size=2, chunk_sequences=2)
    store = dump_activations(smollm_teacher, tokens, tmp_path / "acts.zarr", p, str(smollm_gguf), progress_bar=False)
    assert store.n_layers == 30 and store.d_model == 576 and store.n_sequences("val") == 2
    assert_matches_fresh_forward(store, smollm_teacher, tokens, p, exact_batches=True)


class Crash(Exception):
    pass


def crash_at_once(split, chunk):
    raise Crash(f"simulated crash after {split} chunk {chunk}")


def test_crash_midway_then_resume_gives_identical_store(tmp_path, pythia_store, pythia_random, pythia_tokens, pythia_dir):
    out = tmp_path / "acts.zarr"
    written: list[tuple[str, int]] = []

    def crash_after_two(split, chunk):
        written.append((split, chunk))
        if len(written) == 2:
            raise Crash("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        dump_activations(pythia_random, pythia_tokens, out, PARAMS, str(pythia_dir), progress_bar=False,
                         on_chunk_written=crash_after_two)
    with pytest.raises(StoreIncompleteError, match="incomplete"):
        ActivationStore.open(out)
    partial = ActivationStore.open(out, allow_incomplete=True)
    assert partial.chunks_done("train") == 2 and not partial.complete
    # what a kill inside zarr's own write leaves: the resumed store must not keep it
    (out / "train/layer_01/c/1/0/0.3f9a1c.partial").write_bytes(b"half a chunk")

    resumed: list[tuple[str, int]] = []
    dump_activations(pythia_random, pythia_tokens, out, PARAMS, str(pythia_dir), progress_bar=False,
                     on_chunk_written=lambda s, c: resumed.append((s, c)))
    assert resumed == [("train", 2), ("val", 0)]  # only the chunks not yet done
    assert tree_bytes(out) == tree_bytes(pythia_store.path)


def test_changed_params_restart_instead_of_mixing(tmp_path, pythia_random, pythia_tokens, pythia_dir):
    out = tmp_path / "acts.zarr"
    with pytest.raises(RuntimeError):
        dump_activations(pythia_random, pythia_tokens, out, PARAMS, str(pythia_dir), progress_bar=False,
                         on_chunk_written=crash_at_once)
    p32 = DumpConfig(**{**PARAMS.__dict__, "dtype": "float32", "train_sequences": 4, "val_sequences": 0})
    store = dump_activations(pythia_random, pythia_tokens, out, p32, str(pythia_dir), progress_bar=False)
    assert store.complete and store.layer("train", 1).dtype == np.float32 and store.n_sequences("val") == 0


def test_disk_check_refuses_before_writing(tmp_path, monkeypatch, pythia_random, pythia_tokens, pythia_dir):
    import hyena.data.dump

    monkeypatch.setattr(hyena.data.dump.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(RuntimeError, match=r"not enough disk.*needs .* GB.*10% headroom.*free"):
        dump_activations(pythia_random, pythia_tokens, tmp_path / "acts.zarr", PARAMS, str(pythia_dir), progress_bar=False)
    assert not (tmp_path / "acts.zarr").exists()


def test_inspect_verify_names_a_deleted_and_a_corrupt_chunk(tmp_path, pythia_store):
    from tools.inspect_store import app

    store_dir = tmp_path / "acts.zarr"
    shutil.copytree(pythia_store.path, store_dir)
    ok = CliRunner().invoke(app, [str(store_dir), "--verify", "--slice", "2,1,0:3"])
    assert ok.exit_code == 0, ok.output
    assert "verify: every chunk present" in ok.output and "train/layer_02[1, 0:3]" in ok.output

    store = ActivationStore.open(store_dir)
    store.chunk_file("train", 3, 1).unlink()
    bad = CliRunner().invoke(app, [str(store_dir), "--verify", "--no-stats"])
    assert bad.exit_code == 1
    assert "error: verify failed: missing train/layer_03 chunk 1" in bad.stderr

    victim = store.chunk_file("val", 5, 0)
    victim.write_bytes(victim.read_bytes()[:100])  # truncated
    bad = CliRunner().invoke(app, [str(store_dir), "--verify", "--no-stats"])
    assert bad.exit_code == 1 and "unreadable val/layer_05 chunk 0" in bad.output


def test_kill9_midway_then_resume_gives_identical_store(tmp_path, pythia_dir, pythia_tokens, pythia_random):
    """A real `kill -9` of the stage process mid-dump; the rerun resumes to the bytes of a clean run.

    The stage builds its random teacher with seed 0, as the `pythia_random` fixture does (the
    weights hash in the fingerprint would make the resume start over otherwise: asserted below).
    """
    from hyena.teachers import TeacherConfig, save_teacher

    teacher = tmp_path / "teacher"
    teacher.mkdir()
    save_teacher(TeacherConfig(source=str(pythia_dir), random_init=True, seed=0), teacher)
    p = DumpConfig(train_sequences=12, val_sequences=2, batch_size=1, chunk_sequences=1)
    killed = tmp_path / "killed.zarr"
    params = {"paths": {"teacher": str(teacher), "tokens": str(pythia_tokens), "activations": str(killed)},
              "dump": dict(p.__dict__)}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.dump_activations", "--params", str(tmp_path / "params.yaml")],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not list((killed / "_progress" / "train" / "c").glob("*/0")) and time.time() < deadline:
        assert proc.poll() is None, "the dump ended before it could be killed"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = ActivationStore.open(killed, allow_incomplete=True)
    assert not partial.complete and 0 < partial.chunks_done("train") < 12
    done_before = partial.chunks_done("train")

    resumed: list = []
    dump_activations(pythia_random, pythia_tokens, killed, p, str(pythia_dir), progress_bar=False,
                     on_chunk_written=lambda s, c: resumed.append((s, c)))
    assert len(resumed) == 12 + 2 - done_before  # it resumed rather than starting over
    clean = dump_activations(pythia_random, pythia_tokens, tmp_path / "clean.zarr", p, str(pythia_dir), progress_bar=False)
    assert tree_bytes(killed) == tree_bytes(clean.path)


def test_cached_logits_are_the_teachers_top_k(tmp_path, pythia_random, pythia_tokens, pythia_dir):
    """dump.logits_topk keeps, per training position, the teacher's k largest logits and their ids."""
    p = DumpConfig(train_sequences=4, val_sequences=2, batch_size=2, chunk_sequences=2, logits_topk=5)
    store = dump_activations(pythia_random, pythia_tokens, tmp_path / "acts.zarr", p, str(pythia_dir), progress_bar=False)
    values, ids = store.logits("train")
    assert values.shape == ids.shape == (4, store.seq_len, 5)
    rows = torch.from_numpy(np.asarray(load_tokens(pythia_tokens, "train")[:4], dtype=np.int64))
    with torch.no_grad():
        top = pythia_random(input_ids=rows[:2]).logits.topk(5, dim=-1)  # the dump's first batch
    np.testing.assert_allclose(values[:2], top.values.numpy(), rtol=1e-5, atol=1e-5)
    assert np.array_equal(ids[:2], top.indices.numpy())
    assert bool((np.diff(values[:], axis=-1) <= 0).all())  # largest first
    with pytest.raises(KeyError, match="dump.logits_topk"):
        ActivationStore.open(tmp_path / "acts.zarr").logits("val")


def test_torchrun_two_ranks_write_the_same_store_as_one_process(tmp_path, pythia_tokens, pythia_dir):
    """`torchrun --nproc_per_node=2 -m pipeline.dump_activations`: each rank writes its own chunks,
    and the store (every array, and the attributes) equals a one-process dump's."""
    from conftest import tiny_neox_config
    from transformers import AutoModelForCausalLM, AutoTokenizer

    teacher = tmp_path / "teacher"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny_neox_config()).save_pretrained(teacher)
    AutoTokenizer.from_pretrained(str(pythia_dir)).save_pretrained(teacher)
    dump = {"train_sequences": 10, "val_sequences": 3, "batch_size": 2, "chunk_sequences": 2, "logits_topk": 3}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    stores = {}
    for name, launcher in (("one", []), ("two", ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"])):
        params = tmp_path / f"{name}.yaml"
        params.write_text(yaml.safe_dump({"paths": {"teacher": str(teacher), "tokens": str(pythia_tokens),
                                                    "activations": str(tmp_path / f"{name}.zarr")}, "dump": dump}))
        cmd = [sys.executable, *launcher, *(["pipeline/dump_activations.py"] if launcher else ["-m", "pipeline.dump_activations"]),
               "--params", str(params)]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        stores[name] = ActivationStore.open(tmp_path / f"{name}.zarr")
    one, two = stores["one"], stores["two"]
    assert one.attrs == two.attrs
    for split in one.splits:
        for k in range(one.n_layers + 1):
            assert np.array_equal(one.layer(split, k)[:], two.layer(split, k)[:]), (split, k)
    for a, b in zip(one.logits(), two.logits(), strict=True):
        assert np.array_equal(a[:], b[:])
