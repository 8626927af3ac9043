"""The activation store: every teacher layer's output on the distillation tokens, in one Zarr v3 store.

Layout (`data/activations.zarr`):

    zarr.json                   root attributes: provenance (teacher source + weights hash, token
                                manifest hash, params), shapes, and `complete` (written LAST)
    train/layer_00 .. layer_NN  (n_sequences, seq_len, d) float16 (param), chunked along sequences;
    val/layer_00 .. layer_NN    layer_00 is the embedding output that feeds decoder layer 1 and
                                layer_k (k >= 1) the raw output of decoder layer k (no final norm)
    _progress/train, _progress/val
                                int64 (n_chunks, N+1): non-finite value count of each layer in each
                                sequence chunk, -1 while that chunk is not yet written (resume marker)
    _digests/train, _digests/val
                                uint64 (n_chunks, arrays): the content digest (hyena.core.io.digest, named
                                by the root attribute `digest`) of each chunk file as written, one
                                column per array of the split (attribute `arrays`)

Writing it (`dump_activations`, resuming an interrupted dump chunk by chunk, byte-identical to an
uninterrupted run) is `hyena.data.dump`. Missing chunks read as NaN (fill value), never as zeros.

Integrity: every chunk file's digest is recorded when it is written and checked when a dump resumes
(a chunk that no longer matches is written again, so the store comes back byte-identical), when a
stage reads the store (`check_chunks`: the chunk bytes are read once, digested and decoded) and by
`inspect --verify`. Damaged bytes that still decode to finite numbers are caught this way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr
from tqdm.auto import tqdm

from hyena.core.io import (
    DIGEST,
    CorruptInputError,
    digest,
)
from hyena.data.tokens import SPLITS

FORMAT = "hyena-activations/1"
STAGE = "dump-activations"  # the stage whose marker a store carries (hyena.core.io.atomic_dir)
PROGRESS = "_progress"
DIGESTS = "_digests"
LOGIT_VALUES, LOGIT_IDS = "logits_topk_values", "logits_topk_ids"  # train split only, with dump.logits_topk
REDUMP = "delete paths.activations and rerun the dump-activations stage"  # the fix for a damaged store


def layer_name(k: int) -> str:
    """Array name of layer k: 0 is the embedding output, k >= 1 decoder layer k's output."""
    return f"layer_{k:02d}"


class StoreIncompleteError(RuntimeError):
    """The store exists but its dump has not finished."""


def digest_columns(split: str, n_layers: int, logits_topk: int) -> list[str]:
    """The arrays of `split` whose chunks are digested, in the column order of `_digests/<split>`."""
    names = [layer_name(k) for k in range(n_layers + 1)]
    return names + [LOGIT_VALUES, LOGIT_IDS] if split == "train" and logits_topk else names


def chunk_path(arr: zarr.Array, chunk: int) -> Path | None:
    """The file of sequence chunk `chunk` of `arr` in a local store (None for other stores)."""
    root = getattr(arr.store, "root", None)
    if root is None:
        return None
    return Path(str(root)) / arr.path / arr.metadata.encode_chunk_key((chunk,) + (0,) * (arr.ndim - 1))


def file_digest(path: Path) -> int:
    """The digest of a chunk file as stored (0 if it is missing: never a real file's digest in practice)."""
    try:
        return digest(path.read_bytes())
    except FileNotFoundError:
        return 0


def make_compressors(codec: str, level: int, itemsize: int):
    if codec == "none":
        return None
    if codec == "zstd":
        return [zarr.codecs.ZstdCodec(level=level)]
    return [zarr.codecs.BloscCodec(cname="zstd", clevel=level, shuffle="shuffle", typesize=itemsize)]


# ----------------------------------------------------------------------------- reading


class ActivationStore:
    """Read access to a finished activation store."""
    def __init__(self, path: Path, group: zarr.Group):
        self.path = path
        self.group = group
        self.attrs: dict = dict(group.attrs)
        self.n_layers: int = int(self.attrs["n_layers"])  # decoder layers N; arrays 0..N
        self.seq_len: int = int(self.attrs["seq_len"])
        self.d_model: int = int(self.attrs["d_model"])

    @classmethod
    def open(cls, path: str | Path, allow_incomplete: bool = False) -> ActivationStore:
        path = Path(path)
        if not (path / "zarr.json").is_file():
            raise FileNotFoundError(f"activation store not found: {path} (run the dump-activations stage)")
        group = zarr.open_group(str(path), mode="r", zarr_format=3)
        if group.attrs.get("format") != FORMAT:
            raise ValueError(f"{path} is not an activation store (format {group.attrs.get('format')!r}, expected {FORMAT})")
        store = cls(path, group)
        if not allow_incomplete and not store.complete:
            done = sum(store.chunks_done(s) for s in SPLITS)
            total = sum(store.n_chunks(s) for s in SPLITS)
            raise StoreIncompleteError(
                f"activation store {path} is incomplete ({done}/{total} chunks written): the dump was "
                "interrupted; rerun the dump-activations stage to resume it"
            )
        return store

    @property
    def complete(self) -> bool:
        return self.attrs.get("complete") is True

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.attrs["splits"])

    def n_sequences(self, split: str) -> int:
        return int(self.attrs["splits"][split]["sequences"])

    def logits(self, split: str = "train") -> tuple[zarr.Array, zarr.Array]:
        """The teacher's top-k logits per position and their token ids, each (n, L, k) (dump.logits_topk)."""
        if not self.attrs.get("params", {}).get("logits_topk") or split != "train":
            raise KeyError(f"{self.path} holds no teacher logits for {split!r}: set dump.logits_topk > 0 and rerun "
                           "dump-activations (only the train split is kept)")
        return self.group[f"{split}/{LOGIT_VALUES}"], self.group[f"{split}/{LOGIT_IDS}"]

    def layer(self, split: str, k: int) -> zarr.Array:
        """(n_sequences, seq_len, d) array of layer k (0: embedding output) in `split`."""
        if split not in self.attrs["splits"]:
            raise KeyError(f"split {split!r} not in store {self.path}; has {', '.join(self.attrs['splits'])}")
        if not 0 <= k <= self.n_layers:
            raise KeyError(f"layer {k} out of range 0..{self.n_layers} in store {self.path}")
        return self.group[f"{split}/{layer_name(k)}"]

    def chunk_sequences(self) -> int:
        return int(self.attrs["params"]["chunk_sequences"])

    def n_chunks(self, split: str) -> int:
        return -(-self.n_sequences(split) // self.chunk_sequences())

    def progress(self, split: str) -> np.ndarray:
        """(n_chunks, N+1) non-finite counts per chunk and layer; -1 marks chunks not yet written."""
        if self.n_chunks(split) == 0:
            return np.zeros((0, self.n_layers + 1), dtype=np.int64)
        return self.group[f"{PROGRESS}/{split}"][:]

    def chunks_done(self, split: str) -> int:
        return int((self.progress(split)[:, 0] >= 0).sum())

    def chunk_file(self, split: str, k: int, chunk: int) -> Path:
        """The file holding sequence chunk `chunk` of layer k (LocalStore, default key encoding)."""
        key = self.layer(split, k).metadata.encode_chunk_key((chunk, 0, 0))
        return self.path / split / layer_name(k) / key

    @property
    def has_digests(self) -> bool:
        return self.attrs.get("digest") == DIGEST

    def digest_columns(self, split: str) -> list[str]:
        return digest_columns(split, self.n_layers, int(self.attrs["params"].get("logits_topk") or 0))

    def digests(self, split: str, name: str | int) -> np.ndarray | None:
        """(n_chunks,) recorded digests of array `name` (or layer k) of `split`; None in a store
        made before digests existed."""
        if not self.has_digests or self.n_chunks(split) == 0:
            return None
        name = layer_name(name) if isinstance(name, int) else name
        return self.group[f"{DIGESTS}/{split}"][:, self.digest_columns(split).index(name)]

    def damaged_chunks(self, split: str) -> dict[int, list[str]]:
        """{chunk: [array names]} of the chunks marked done whose files no longer match their
        recorded digests (a full read of those chunks). Empty in a store without digests."""
        if not self.has_digests or self.n_chunks(split) == 0:
            return {}
        recorded = self.group[f"{DIGESTS}/{split}"][:]
        done = self.progress(split)[:, 0] >= 0
        bad: dict[int, list[str]] = {}
        for j, name in enumerate(self.digest_columns(split)):
            arr = self.group[f"{split}/{name}"]
            for chunk in np.flatnonzero(done).tolist():
                if file_digest(chunk_path(arr, chunk)) != int(recorded[chunk, j]):
                    bad.setdefault(chunk, []).append(name)
        return bad


# ----------------------------------------------------------------------------- writing


def disk_bytes(path: Path) -> int:
    """Bytes on disk of every file under `path` (file sizes, not blocks)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def layer_stats(arr: zarr.Array, n_sample: int) -> dict[str, float]:
    """mean, std, max |x| and fraction non-finite over the first n_sample sequences (float64 sums)."""
    x = np.asarray(arr[: min(n_sample, arr.shape[0])], dtype=np.float64)  # (n, L, d)
    finite = np.isfinite(x)
    vals = x[finite]
    return {
        "mean": float(vals.mean()) if vals.size else float("nan"),
        "std": float(vals.std()) if vals.size else float("nan"),
        "max_abs": float(np.abs(vals).max()) if vals.size else float("nan"),
        "non_finite": float(1.0 - finite.mean()) if x.size else 0.0,
    }


def parse_slice(spec: str) -> tuple[int, int, int, int]:
    """'layer,seq,start:stop' -> (layer, seq, start, stop); start/stop may be omitted (':')."""
    parts = [s.strip() for s in spec.split(",")]
    if len(parts) != 3 or ":" not in parts[2]:
        raise ValueError(f"--slice {spec!r}: expected LAYER,SEQ,START:STOP (e.g. 3,0,0:8)")
    try:
        layer, seq = int(parts[0]), int(parts[1])
        a, b = parts[2].split(":", 1)
        return layer, seq, int(a) if a else 0, int(b) if b else -1
    except ValueError:
        raise ValueError(f"--slice {spec!r}: LAYER, SEQ, START and STOP must be integers (e.g. 3,0,0:8)") from None


def verify_store(store: ActivationStore, progress_bar: bool = True) -> list[str]:
    """Every problem found: missing/unreadable chunk files, chunks that no longer match their
    recorded digests, non-finite values, unmarked chunks.

    Reads every chunk of every layer once (a full pass over the store). An empty list means
    every chunk is present, matches its digest, decodes, and holds only finite values.
    """
    problems: list[str] = []
    if not store.has_digests:
        problems.append(f"{store.path} records no chunk digests (made before they existed): damaged bytes that "
                        f"decode to finite numbers cannot be detected; {REDUMP}")
    if not store.complete:
        problems.append(f"store not marked complete ({sum(store.chunks_done(s) for s in store.splits)} chunks done)")
    c = store.chunk_sequences()
    total = sum(store.n_chunks(s) for s in store.splits) * (store.n_layers + 1)
    with tqdm(total=total, desc="verify", unit="chunk", disable=not progress_bar) as bar:
        for split in store.splits:
            prog = store.progress(split)
            for chunk in np.flatnonzero(prog[:, 0] < 0).tolist():
                problems.append(f"{split} chunk {chunk} (sequences {chunk * c}..) not marked done in {PROGRESS}/{split}")
            for k in range(store.n_layers + 1):
                arr, digests = store.layer(split, k), store.digests(split, k)
                for chunk in range(store.n_chunks(split)):
                    bar.update(1)
                    where = f"{split}/{layer_name(k)} chunk {chunk} ({store.chunk_file(split, k, chunk)})"
                    try:
                        x = read_chunk(arr, chunk, None if digests is None or prog[chunk, 0] < 0 else digests[chunk])
                    except ChunkError as err:
                        problems.append({"missing": f"missing {where}", "digest": f"digest mismatch (damaged on disk) in {where}",
                                         "unreadable": f"unreadable {where}: {err.detail}"}[err.kind])
                        continue
                    bad = x.size - int(np.count_nonzero(np.isfinite(x)))
                    if bad:
                        problems.append(f"{bad} non-finite values in {where}")
    return problems


def _plain_bytes(arr: zarr.Array) -> bool:
    """Whether a chunk file of `arr` is its raw little-endian C-order bytes (no codec but `bytes`)."""
    codecs = arr.metadata.codecs
    return (len(codecs) == 1 and isinstance(codecs[0], zarr.codecs.BytesCodec)
            and (codecs[0].endian is None or codecs[0].endian.value == "little"))


class ChunkError(CorruptInputError):
    """A damaged chunk file: `kind` is missing | unreadable | digest, `detail` the decoder's words."""
    def __init__(self, kind: str, where: str, detail: str = ""):
        self.kind, self.where, self.detail = kind, where, detail
        super().__init__({
            "missing": f"missing chunk file {where}",
            "unreadable": f"unreadable chunk file {where}, truncated or corrupt ({detail})",
            "digest": f"chunk file {where} does not match the digest recorded when it was written (damaged on disk)",
            "nonfinite": f"{detail} non-finite values in chunk file {where}",
        }[kind])


def read_chunk(arr: zarr.Array, chunk: int, expected: int | None = None, finite: bool = False) -> np.ndarray:
    """Sequence chunk `chunk` of `arr` (chunked along its first axis, in a local store), read once:
    the file's bytes are decoded and digested against `expected` (when given). Raises ChunkError
    naming the file: missing (it would read as fill values), undecodable, or not matching its digest."""
    rows = arr.chunks[0]
    a, b = chunk * rows, min((chunk + 1) * rows, arr.shape[0])
    f = chunk_path(arr, chunk)
    if f is None:
        return arr[a:b]
    where = f"{f} (sequences {a}..{b - 1})"
    try:
        raw = f.read_bytes()
    except FileNotFoundError:
        raise ChunkError("missing", where) from None
    try:
        if _plain_bytes(arr):  # decode the bytes just read: the digest costs no second read
            x = np.frombuffer(raw, dtype=arr.dtype.newbyteorder("<")).reshape(arr.chunks)[: b - a]
        else:
            x = arr[a:b]
    except Exception as err:  # noqa: BLE001 - any decode failure means a damaged file
        raise ChunkError("unreadable", where, f"{type(err).__name__}: {err}") from None
    if finite and (bad := x.size - int(np.count_nonzero(np.isfinite(x)))):  # the more telling problem first
        raise ChunkError("nonfinite", where, str(bad))
    if expected is not None and digest(raw) != int(expected):
        raise ChunkError("digest", where)
    return x


def check_chunks(arr: zarr.Array, what: str, fix: str, progress_bar: bool = False,
                 digests: np.ndarray | None = None) -> None:
    """Read every chunk of `arr` ((n, L, d), chunked along sequences, in a local store) once and
    raise CorruptInputError naming the first chunk file that is missing (it would read as fill
    values), does not match its recorded digest (`digests`, one per chunk, when the store has
    them), is undecodable (truncated) or holds non-finite values; `fix` says what to rerun."""
    n_chunks = -(-arr.shape[0] // arr.chunks[0])
    for chunk in tqdm(range(n_chunks), desc=f"check {what}", unit="chunk", disable=not progress_bar, leave=False):
        try:
            read_chunk(arr, chunk, None if digests is None else digests[chunk], finite=True)
        except ChunkError as err:
            raise CorruptInputError(f"{err} of {what}: {fix}") from None


# ---- the student's own layer outputs, cached per distillation stage ------------------------------
#
# Progressive distillation feeds layer i with the frozen student's output of layer i-1. Each
# progressive `distill@i` stage runs its trained layer once over every train/val sequence and
# stores the result next to the layer's weights, so stage i+1 reads its inputs instead of
# re-running layers 1..i every step. Layout: a Zarr v3 group with arrays `train` and `val`,
# (n, L, d) float16, chunked along sequences; the attribute `complete` is written last.


def open_outputs(path: str | Path) -> zarr.Group:
    """Open a finished outputs group, refusing an incomplete one."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"student layer outputs not found: {path} (rerun the previous distill stage "
                                f"with distill.input: student)")
    group = zarr.open_group(str(path), mode="r")
    if not group.attrs.get("complete"):
        raise RuntimeError(f"{path} is incomplete (its stage was interrupted): rerun that stage")
    return group


def write_outputs(path: str | Path, shapes: dict[str, tuple[int, int, int]], fill, chunk_rows: int = 16,
                  attrs: dict | None = None) -> None:
    """Create arrays `shapes` (name -> (n, L, d)) at `path` (inside the caller's atomic output
    directory) and call `fill(name, array)` for each; `complete` is written last."""
    group = zarr.open_group(str(path), mode="w")
    for name, shape in shapes.items():
        arr = group.create_array(name, shape=shape, dtype="float16",
                                 chunks=(min(chunk_rows, max(shape[0], 1)), shape[1], shape[2]),
                                 compressors=None)
        fill(name, arr)
    group.attrs.update({**(attrs or {}), "complete": True})


def layer_pairs(teacher: ActivationStore, idx: int, prev: int, student_outputs: str | Path | None,
                progress_bar: bool = True) -> tuple[tuple, tuple]:
    """((train inputs, train targets), (val inputs, val targets)) for distilling decoder layer `idx`
    (1-based): the targets are the teacher's layer idx; the inputs are the student's own output of
    layer `prev` read from `student_outputs` (progressive), or the teacher's layer `prev` when that
    is None (teacher-forced, or layer 1, whose input the student shares). Every array is checked
    first (digests, decoding, finite values), so that a damaged input is named as such instead of
    surfacing later as a diverged loss or, worse, as a plausible one."""
    if student_outputs is not None:
        inputs = open_outputs(student_outputs)
        ins, fix_in, digests_in = (inputs["train"], inputs["val"]), f"rerun distill@{prev:02d}", {}
    else:
        ins = (teacher.layer("train", prev), teacher.layer("val", prev))
        fix_in, digests_in = REDUMP, {s: teacher.digests(s, prev) for s in ("train", "val")}
    outs = (teacher.layer("train", idx), teacher.layer("val", idx))
    for split, arr in zip(("train", "val"), ins, strict=True):
        check_chunks(arr, arr.path, fix_in, progress_bar=progress_bar, digests=digests_in.get(split))
    for split, arr in zip(("train", "val"), outs, strict=True):
        check_chunks(arr, arr.path, REDUMP, progress_bar=progress_bar, digests=teacher.digests(split, idx))
    return (ins[0], outs[0]), (ins[1], outs[1])
