"""Small I/O helpers shared by the library: atomic outputs, output ownership and content hashes.

Every stage output is written under a temporary sibling and moved into place only when complete,
so a killed process never leaves an artifact that a later stage would trust. An output directory
carries a marker file naming the stage that wrote it; a stage replaces an existing directory only
when that marker names the same stage (or the directory is empty), so a mistyped output path can
never delete a directory the pipeline did not write. Temporary siblings that a killed run left
behind are removed by the next run writing the same output.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

MARKER = ".hyena-output"  # inside every output directory: {"stage": NAME}


class OutputConflictError(FileExistsError):
    """An output path names something that is not a previous output of the same stage."""


class CorruptInputError(ValueError):
    """An input file exists but is truncated, undecodable or holds non-finite values."""


@contextlib.contextmanager
def reading_weights(path: str | os.PathLike, fix: str = "rerun the stage that wrote it") -> Iterator[None]:
    """Around a model load from `path` (a model directory or a weights file): a truncated or
    corrupt safetensors file, a config.json that is not JSON, or a directory without weights,
    becomes one line naming it and `fix`."""
    path = Path(path)
    try:
        yield
    except Exception as err:
        if isinstance(err, OSError) and "is not a valid JSON file" in str(err):  # transformers' wording
            config = path / "config.json" if path.is_dir() else path
            raise CorruptInputError(f"{config} is not valid JSON: the directory is damaged: {fix}") from None
        if type(err).__name__ == "SafetensorError":
            files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
            named = ", ".join(map(str, files)) or str(path)
            raise CorruptInputError(f"{named} is truncated or corrupt ({err}): {fix}") from None
        if isinstance(err, OSError) and not isinstance(err, FileNotFoundError) and "no file named" in str(err):
            raise FileNotFoundError(f"{path} has no model weights (model.safetensors): {fix}") from None
        raise


def output_owner(path: str | os.PathLike) -> str | None:
    """The stage named by the marker of output directory `path` (None: no readable marker)."""
    try:
        return json.loads((Path(path) / MARKER).read_text()).get("stage")
    except (OSError, ValueError, AttributeError):
        return None


def check_replaceable(path: str | os.PathLike, stage: str) -> None:
    """Refuse (one line) unless `path` is absent, an empty directory, or an output of `stage`.

    Stages call this before they start working, so a wrong path fails in a second, not after
    training; `atomic_dir` checks again before it replaces anything."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink():
        raise OutputConflictError(f"refusing to replace {path}: it is a symbolic link (outputs are replaced by "
                                  "renaming, never through a link); set the output path to the real directory")
    if not path.is_dir():
        raise OutputConflictError(f"refusing to replace {path}: it is a file, not an output directory of "
                                  f"stage {stage}; move it away or choose another output path")
    owner = output_owner(path)
    if owner == stage or (owner is None and not any(path.iterdir())):
        return
    what = f"an output of stage {owner}" if owner else f"not an output of stage {stage} (no {MARKER} marker)"
    raise OutputConflictError(f"refusing to replace {path}: it is {what}; move it away or choose another output path")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftover from an earlier attempt in this process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers(path: str | os.PathLike) -> list[Path]:
    """Clear what killed processes left beside `path`: their `.NAME.tmp-PID` directories are
    removed; a `.NAME.old-PID` is the complete previous output, put back if `path` is missing
    (killed between the two renames of `atomic_dir`) and removed otherwise. Returns the removed."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    for tag in (".old-", ".tmp-"):  # restore before removing
        prefix = f".{path.name}{tag}"
        for sibling in sorted(path.parent.iterdir()):
            pid = sibling.name[len(prefix):] if sibling.name.startswith(prefix) else ""
            if not pid.isdigit() or _pid_alive(int(pid)):
                continue
            if tag == ".old-" and not path.exists() and sibling.is_dir():
                os.replace(sibling, path)
                continue
            shutil.rmtree(sibling) if sibling.is_dir() and not sibling.is_symlink() else sibling.unlink()
            removed.append(sibling)
    return removed


class OutputBusyError(RuntimeError):
    """Another live process holds the output's writer lock."""


LOCK_DIR = Path(tempfile.gettempdir()) / "hyena-output-locks"  # outside the project: no files for git or DVC
_held: dict[str, int] = {}  # lock file -> open descriptor, for the locks this process holds


def _lock_file(path: str | os.PathLike) -> Path:
    key = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:24]
    return LOCK_DIR / f"{key}.lock"


def hold_output(path: str | os.PathLike, stage: str = "") -> bool:
    """Take the exclusive writer lock of output `path` for this process (no-op if it already holds
    it; returns whether it was newly taken). Another live holder: OutputBusyError at once, naming
    its pid. The lock is an flock, which the kernel drops when its holder dies, however it dies
    (kill -9 included): a dead holder's lock is simply taken over, never guessed at by pid."""
    import fcntl

    lock = _lock_file(path)
    if str(lock) in _held:
        return False
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode(errors="replace").split("\t")
        os.close(fd)
        who = f"pid {holder[0]}" + (f" ({holder[1]})" if len(holder) > 1 and holder[1] else "") if holder[0] else "another process"
        raise OutputBusyError(f"{path} is being written by {who}: two writers would mix their outputs; wait for it "
                              "to finish (or stop that process) and rerun") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\t{stage}\t{Path(path).resolve()}\n".encode(), 0)
    _held[str(lock)] = fd
    return True


def release_output(path: str | os.PathLike) -> None:
    fd = _held.pop(str(_lock_file(path)), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor drops the flock


def release_outputs() -> None:
    """Drop every writer lock this process holds (a stage's end; the kernel does it at exit anyway)."""
    for fd in _held.values():
        os.close(fd)
    _held.clear()


def claim_output(path: str | os.PathLike, stage: str) -> Path:
    """What a stage does first for each output directory: take its writer lock (held until the
    stage ends), refuse a foreign `path`, and clear what a killed earlier run left beside it."""
    hold_output(path, stage)
    check_replaceable(path, stage)
    remove_leftovers(path)
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, stage: str) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces `path` only if the block succeeds.

    The result carries the marker of `stage`. An existing `path` must be an earlier output of the
    same stage: it is renamed aside, the new directory renamed in, and only then the old one
    deleted, so at every instant `path` is either the complete old output, absent, or the
    complete new one (never a mix)."""
    newly_held = hold_output(path, stage)  # a stage holds it already (claim_output); a library call only here
    try:
        path = claim_output(path, stage)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.mkdir(parents=True)
        try:
            yield tmp
            (tmp / MARKER).write_text(json.dumps({"stage": stage}) + "\n")
            check_replaceable(path, stage)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if newly_held:
            release_output(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


DIGEST = "xxh3_64"  # content digest of stored chunks: ~19 GB/s on one core here (crc32 4.5, blake2b 0.8)


def digest(data: bytes | memoryview) -> int:
    """A cheap content digest (64-bit unsigned) of `data`: catches damaged bytes, not an adversary."""
    import xxhash

    return xxhash.xxh3_64_intdigest(data)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
