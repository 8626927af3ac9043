"""Writing the activation store (`hyena.data.store` describes its layout): the `dump` params, the
dump plan and its fingerprint, the teacher's forward passes feeding a writer thread chunk by chunk,
and resuming an interrupted dump from the chunks it finished.

Resumability: the dump is cut into units of one sequence chunk (chunk_sequences rows, forwarded in
batches of batch_size that never cross a chunk boundary). A unit is written layer by layer (zarr's
LocalStore writes every file atomically) and only then marked done in `_progress`; a rerun with the
same fingerprint (teacher weights, token manifest, params) skips the units marked done and redoes
the others with the same batches, so the final store is byte-identical to an uninterrupted run.
Missing chunks read as NaN (fill value), never as plausible zeros.
"""

from __future__ import annotations

import hashlib
import json
import queue
import shutil
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import zarr
from tqdm.auto import tqdm

from hyena.core.config import Config, param
from hyena.core.io import (
    DIGEST,
    atomic_dir,
    hold_output,
    release_output,
)
from hyena.data.resume import finalise, resumable_store, unmark_damaged
from hyena.data.store import (
    DIGESTS,
    FORMAT,
    LOGIT_IDS,
    LOGIT_VALUES,
    PROGRESS,
    STAGE,
    ActivationStore,
    chunk_path,
    digest_columns,
    file_digest,
    layer_name,
    make_compressors,
)
from hyena.data.tokens import SPLITS, load_manifest, load_tokens
from hyena.teachers import capture, get_adapter, weights_hash

HEADROOM = 1.10  # refuse to start unless free disk >= 110% of the bytes still to write


@dataclass
class DumpConfig(Config):
    """params.yaml `dump`: which sequences' teacher activations are cached, and how they are stored."""
    SECTION = "dump"

    train_sequences: int | None = param(39063, "first N training sequences whose teacher activations are cached (null: all; paper: 40M tokens)", ge=0)
    val_sequences: int | None = param(2000, "cap on validation sequences (dumped in full up to this)", ge=0)
    batch_size: int = param(60, "sequences per teacher forward pass", ge=1)
    chunk_sequences: int = param(64, "sequences per Zarr chunk; also the resume granularity", ge=1)
    dtype: Literal["float16", "float32"] = param("float16", "stored dtype: float16 | float32")
    codec: Literal["none", "zstd", "blosc"] = param("none", "none | zstd | blosc (activations barely compress, ~1.08x)")
    codec_level: int = param(3, "zstd / blosc level", ge=0)
    logits_topk: int = param(0, "teacher logits kept per training position, the k largest with their token ids, for "
                                "the logit-distillation fine-tune (finetune.kl_source: cached; 0: none)", ge=0)
    queue_chunks: int = param(2, "chunks buffered between the teacher's forward pass and the writer thread", ge=1)
    device: str = param("auto", "auto | cpu | cuda")

    def content_params(self) -> dict:
        """The params that decide the stored bytes: a resumed run must match them. The queue size
        does not matter; the device does numerically, but a resumed run is expected to use the same."""
        d = asdict(self)
        d.pop("queue_chunks")
        d.pop("device")
        return d


def store_fingerprint(teacher: dict, manifest_hash: str, params: DumpConfig) -> str:
    """What a resumed dump must share with the partial store: the stored bytes depend on nothing else."""
    body = {"format": FORMAT, "teacher": teacher, "tokens": manifest_hash, "params": params.content_params()}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _create_store(path: Path, attrs: dict, sizes: dict[str, int], seq_len: int, d: int,
                  n_layers: int, p: DumpConfig) -> None:
    """Create every array (no chunk data yet) in a temporary dir, then move it into place."""
    dtype = np.dtype(p.dtype)
    with atomic_dir(path, STAGE) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3, attributes=attrs)
        progress = root.create_group(PROGRESS)
        digests = root.create_group(DIGESTS)
        for split, n in sizes.items():
            group = root.create_group(split)
            for k in range(n_layers + 1):
                arr = group.create_array(
                    layer_name(k), shape=(n, seq_len, d), chunks=(p.chunk_sequences, seq_len, d),
                    dtype=dtype, fill_value=np.nan, compressors=make_compressors(p.codec, p.codec_level, dtype.itemsize),
                    dimension_names=("sequence", "position", "channel"),
                )
                arr.attrs.update({
                    "layer": k, "dtype": p.dtype,
                    "what": "embedding output (input of decoder layer 1)" if k == 0 else f"raw output of decoder layer {k}",
                })
            if split == "train" and p.logits_topk:
                k = p.logits_topk
                group.create_array(LOGIT_VALUES, shape=(n, seq_len, k), chunks=(p.chunk_sequences, seq_len, k),
                                   dtype=np.float32, fill_value=np.nan, compressors=None,
                                   dimension_names=("sequence", "position", "rank"))
                group.create_array(LOGIT_IDS, shape=(n, seq_len, k), chunks=(p.chunk_sequences, seq_len, k),
                                   dtype=np.int32, fill_value=-1, compressors=None,
                                   dimension_names=("sequence", "position", "rank"))
            n_chunks = -(-n // p.chunk_sequences)
            if n_chunks:
                progress.create_array(split, shape=(n_chunks, n_layers + 1), chunks=(1, n_layers + 1),
                                      dtype=np.int64, fill_value=-1, compressors=None)
                columns = digest_columns(split, n_layers, p.logits_topk)
                digests.create_array(split, shape=(n_chunks, len(columns)), chunks=(1, len(columns)),
                                     dtype=np.uint64, fill_value=0, compressors=None,
                                     attributes={"arrays": columns, "digest": DIGEST})


def _check_disk(path: Path, needed: int) -> None:
    probe = path if path.exists() else path.parent
    probe.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(probe).free
    if needed * HEADROOM > free:
        raise RuntimeError(
            f"not enough disk for activation store {path}: needs {needed / 1e9:.2f} GB "
            f"(+10% headroom = {needed * HEADROOM / 1e9:.2f} GB), {free / 1e9:.2f} GB free; "
            "lower dump.train_sequences/val_sequences, use dtype float16, or free space"
        )


class _ChunkWriter(threading.Thread):
    """Writes queued (split, chunk, rows, buffer) units so the teacher's forward pass never waits on I/O."""
    def __init__(self, group: zarr.Group, n_layers: int, maxsize: int,
                 on_chunk_written: Callable[[str, int], None] | None):
        super().__init__(name="activation-writer", daemon=True)
        self.group, self.n_layers, self.callback = group, n_layers, on_chunk_written
        self.queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self.error: BaseException | None = None

    def run(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is not None:
                continue  # drain without writing so the producer never blocks
            try:
                self._write(*item)
            except BaseException as err:  # noqa: BLE001 - re-raised in the producer thread
                self.error = err

    def _write(self, split: str, chunk: int, start: int, buf: np.ndarray, logits: tuple | None) -> None:
        counts = np.empty(self.n_layers + 1, dtype=np.int64)
        sums = []
        for k in range(self.n_layers + 1):
            arr = self.group[f"{split}/{layer_name(k)}"]
            arr[start : start + buf.shape[1]] = buf[k]
            counts[k] = buf[k].size - np.count_nonzero(np.isfinite(buf[k]))
            sums.append(file_digest(chunk_path(arr, chunk)))  # the file as written (page cache)
        if logits is not None:
            for name, values in ((LOGIT_VALUES, logits[0]), (LOGIT_IDS, logits[1])):
                arr = self.group[f"{split}/{name}"]
                arr[start : start + buf.shape[1]] = values
                sums.append(file_digest(chunk_path(arr, chunk)))
        self.group[f"{DIGESTS}/{split}"][chunk] = np.array(sums, dtype=np.uint64)
        self.group[f"{PROGRESS}/{split}"][chunk] = counts  # the chunk's "done" marker, written last
        if self.callback is not None:
            self.callback(split, chunk)

    def put(self, item) -> None:
        while True:
            if self.error is not None:
                raise RuntimeError(f"activation writer failed: {self.error}") from self.error
            try:
                self.queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def finish(self) -> None:
        self.queue.put(None)
        self.join()
        if self.error is not None:
            raise RuntimeError(f"activation writer failed: {self.error}") from self.error


@dataclass
class DumpPlan:
    """What a dump will write: token rows and sizes per split, shapes, and the store's provenance."""
    rows: dict[str, np.ndarray]  # split -> (n, L) token rows (memory-mapped)
    sizes: dict[str, int]  # split -> sequences to dump
    seq_len: int
    d_model: int
    n_layers: int
    attrs: dict  # root attributes of a new store (provenance, shapes, params)

    @property
    def fingerprint(self) -> str:
        return self.attrs["fingerprint"]


def plan_dump(model: torch.nn.Module, tokens_dir: str | Path, p: DumpConfig, teacher_source: str) -> DumpPlan:
    """Check the token rows against the params and the teacher, and describe the store to write."""
    tokens_dir = Path(tokens_dir)
    manifest = load_manifest(tokens_dir)
    rows = {split: load_tokens(tokens_dir, split) for split in SPLITS}
    n_train = len(rows["train"]) if p.train_sequences is None else p.train_sequences
    if n_train > len(rows["train"]):
        raise ValueError(
            f"dump.train_sequences {n_train} exceeds the {len(rows['train'])} training sequences in "
            f"{tokens_dir}: lower it (or null for all) or tokenize more documents"
        )
    n_val = len(rows["val"]) if p.val_sequences is None else min(p.val_sequences, len(rows["val"]))
    sizes = {"train": n_train, "val": n_val}
    seq_len = int(rows["train"].shape[1])
    adapter = get_adapter(model)
    n_layers = len(adapter.layers(model))
    d = int(model.config.hidden_size)
    vocab = adapter.embedding(model).weight.shape[0]
    top = max((int(rows[s][: sizes[s]].max()) for s in SPLITS if sizes[s]), default=0)
    if top >= vocab:
        raise ValueError(
            f"token id {top} in {tokens_dir} is outside the teacher's vocabulary ({vocab}): the tokens were "
            "made with another tokenizer; rerun the tokenize stage with this teacher"
        )
    teacher = {"source": teacher_source, "weights_hash": weights_hash(model), "family": adapter.family,
               "n_layers": n_layers, "d_model": d}
    attrs = {
        "format": FORMAT, "complete": False, "digest": DIGEST, "fingerprint": store_fingerprint(teacher, manifest["content_hash"], p),
        "teacher": teacher, "teacher_source": teacher_source, "teacher_weights_hash": teacher["weights_hash"],
        "tokens_manifest_hash": manifest["content_hash"],
        "tokens": {"dir": str(tokens_dir), "manifest_hash": manifest["content_hash"]},
        "params": asdict(p), "dtype": p.dtype, "seq_len": seq_len, "d_model": d,
        "n_layers": n_layers, "splits": {s: {"sequences": sizes[s]} for s in SPLITS},
        "layers": "layer_00 = embedding output; layer_k = raw output of decoder layer k (1-based)",
    }
    return DumpPlan(rows, sizes, seq_len, d, n_layers, attrs)


def dump_activations(model: torch.nn.Module, tokens_dir: str | Path, out: str | Path, p: DumpConfig,
                     teacher_source: str, *, progress_bar: bool = True,
                     on_chunk_written: Callable[[str, int], None] | None = None,
                     rank: int = 0, world_size: int = 1, barrier: Callable[[], None] = lambda: None) -> ActivationStore:
    """Run `model` over the token budget and store every layer's output; resume if possible.

    Returns the finished store. `on_chunk_written(split, chunk)` is called (in the writer thread)
    after each chunk is durably marked done: progress reporting, and crash simulation in tests.

    Sharded (torchrun): every rank calls this with its `rank`, the `world_size` and a `barrier`;
    rank 0 creates (or resumes) the store, each rank forwards and writes the chunks c with
    c % world_size == rank (chunk files and their progress rows are separate files, so ranks never
    write the same file), and rank 0 finalises. The bytes equal a single-process dump's.
    """
    out = Path(out)
    plan = plan_dump(model, tokens_dir, p, teacher_source)
    newly_held = rank == 0 and hold_output(out, STAGE)  # one writer per store for the whole dump
    try:
        if rank == 0:
            store = resumable_store(out, plan.fingerprint)
            if store is not None:
                store = unmark_damaged(out, store)
            _check_disk(out, _bytes_to_write(plan, p, store))
            if store is None:
                _create_store(out, plan.attrs, plan.sizes, plan.seq_len, plan.d_model, plan.n_layers, p)
        barrier()
        store = ActivationStore.open(out, allow_incomplete=True)
        if store.attrs.get("fingerprint") != plan.fingerprint:
            raise RuntimeError(f"{out} was made for another teacher, tokens or params than this rank's (mixed torchrun launch?)")
        if not store.complete:
            todo = {s: [c for c in range(-(-plan.sizes[s] // p.chunk_sequences))
                        if c % world_size == rank and store.progress(s)[c, 0] < 0] for s in SPLITS}
            _write_chunks(model, plan, zarr.open_group(str(out), mode="r+", zarr_format=3), todo, p,
                          progress_bar and rank == 0, on_chunk_written)
        barrier()
        if rank == 0 and not store.complete:
            finalise(out)
        barrier()
        return ActivationStore.open(out)
    finally:
        if newly_held:
            release_output(out)


def _bytes_to_write(plan: DumpPlan, p: DumpConfig, store: ActivationStore | None) -> int:
    """Bytes the chunks not yet written take on disk (a chunk file is always full-size; codecs barely help)."""
    per_sequence = plan.seq_len * plan.d_model * np.dtype(p.dtype).itemsize * (plan.n_layers + 1)
    total = 0
    for split, n in plan.sizes.items():
        n_chunks = -(-n // p.chunk_sequences)
        left = n_chunks if store is None else int((store.progress(split)[:, 0] < 0).sum()) if n_chunks else 0
        logits = plan.seq_len * p.logits_topk * 8 if split == "train" else 0  # fp32 values + int32 ids
        total += left * p.chunk_sequences * (per_sequence + logits)
    return total


def _write_chunks(model: torch.nn.Module, plan: DumpPlan, group: zarr.Group, todo: dict[str, list[int]],
                  p: DumpConfig, progress_bar: bool, on_chunk_written) -> None:
    """Forward the chunks in `todo` through the teacher while a writer thread stores the previous ones."""
    device = next(model.parameters()).device
    remaining = sum(min(p.chunk_sequences, plan.sizes[s] - c * p.chunk_sequences) for s in SPLITS for c in todo[s])
    writer = _ChunkWriter(group, plan.n_layers, p.queue_chunks, on_chunk_written)
    writer.start()
    bar = tqdm(total=remaining * plan.seq_len, unit="tok", unit_scale=True, desc="dump", disable=not progress_bar)
    try:
        for split in SPLITS:
            for chunk in todo[split]:
                start = chunk * p.chunk_sequences
                stop = min(start + p.chunk_sequences, plan.sizes[split])
                n, k = stop - start, p.logits_topk if split == "train" else 0
                buf = np.empty((plan.n_layers + 1, n, plan.seq_len, plan.d_model), dtype=p.dtype)  # (N+1, n, L, d)
                top = (np.empty((n, plan.seq_len, k), np.float32), np.empty((n, plan.seq_len, k), np.int32)) if k else None
                for b0 in range(0, n, p.batch_size):  # batches never cross a chunk boundary
                    b1 = min(b0 + p.batch_size, n)
                    ids = torch.from_numpy(np.asarray(plan.rows[split][start + b0 : start + b1], dtype=np.int64)).to(device)
                    outputs, logits = capture(model, ids)
                    for j, h in enumerate(outputs):  # each (B, L, d)
                        buf[j, b0:b1] = h.cpu().numpy()  # numpy casts to the stored dtype (round to nearest)
                    if top is not None:
                        values, idx = logits.float().topk(k, dim=-1)  # (B, L, k), largest first
                        top[0][b0:b1], top[1][b0:b1] = values.cpu().numpy(), idx.cpu().numpy()
                    bar.update((b1 - b0) * plan.seq_len)
                writer.put((split, chunk, start, buf, top))
        writer.finish()
    finally:
        bar.close()
        if writer.is_alive():  # an error on this side: let queued chunks land, then stop
            writer.queue.put(None)
            writer.join()
