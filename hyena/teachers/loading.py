"""Loading teachers: from a hub id, a local directory or a GGUF file (checked before the loader
sees it), materialising one as a plain HF directory with its provenance, and reading its size
from the config alone."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from hyena.core.config import Config, param
from hyena.core.io import CorruptInputError
from hyena.teachers.families import get_adapter
from hyena.teachers.gguf_cache import gguf_reader, shared_gguf_parses


@dataclass
class TeacherConfig(Config):
    """params.yaml `teacher`: where the teacher comes from. The `teacher` stage reads it once and
    writes the teacher as a local HF directory that every later stage loads."""

    SECTION = "teacher"

    source: str = param("EleutherAI/pythia-70m", "hub id, local model directory or .gguf file")
    random_init: bool = param(False, "true: the teacher's architecture with seeded random weights (no weights offline)")
    seed: int = param(0, "seed of random_init")



def _is_gguf(path: str) -> bool:
    return path.endswith(".gguf")


GGUF_FIX = "re-download it, or point teacher.source at a complete .gguf file or a model directory"


def read_gguf(source: str | Path, fix: str = GGUF_FIX):
    """The `gguf` reader of a .gguf file, after checking its header and tensor table parse and
    every tensor's data lies inside the file (memory-mapped: nothing is decoded, a few seconds,
    once per process: `gguf_cache`).

    A truncated download or a file that is not a GGUF is one line naming the file and `fix`,
    instead of a reshape or struct error from deep inside the loader."""
    p = Path(source).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"GGUF file not found: {source} ({fix})")
    size = p.stat().st_size
    try:
        reader = gguf_reader(p)
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    except (ValueError, struct.error, IndexError, KeyError, EOFError, OverflowError, TypeError) as err:
        raise CorruptInputError(f"{source} is truncated or not a GGUF file ({type(err).__name__}): {fix}") from None
    if not reader.tensors or end > size:
        raise CorruptInputError(f"{source} is truncated or not a GGUF file (tensor data needs {end} bytes, "
                                f"the file has {size}): {fix}")
    return reader


def _looks_like_path(source: str) -> bool:
    """Hub ids are "name" or "org/name"; anything else (absolute, ./, ../, ~, deeper) is a path."""
    return source.startswith(("/", ".", "~")) or source.count("/") > 1 or "\\" in source


def _split_source(source: str) -> tuple[str, dict]:
    """(directory or hub id, extra kwargs for from_pretrained) for a hub id, directory or .gguf."""
    if _is_gguf(source):
        p = Path(source).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"teacher GGUF file not found: {source} (fix the teacher path)")
        return str(p.parent), {"gguf_file": p.name}
    if _looks_like_path(source) and not Path(source).expanduser().exists():
        raise FileNotFoundError(f"teacher directory not found: {source} (fix the teacher path)")
    return source, {}


def _offline_hint(source: str, err: Exception) -> RuntimeError:
    return RuntimeError(
        f"could not load teacher {source!r} from the Hugging Face hub ({type(err).__name__}); "
        "the hub is unreachable or the id is wrong: pass a local directory or a .gguf file path instead"
    )


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "tokenizer.model", "chat_template.jinja")


def has_tokenizer(directory: str | Path) -> bool:
    """Whether a model directory holds a tokenizer (transformers would build an EMPTY one otherwise)."""
    return any((Path(directory) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model"))


def copy_tokenizer(src: str | Path, dst: str | Path) -> None:
    """Copy the tokenizer files of model directory `src` into `dst` (a student stays self-contained)."""
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            shutil.copy2(Path(src) / name, Path(dst) / name)


def load_tokenizer(source: str):
    """Tokenizer for a hub id, a local directory or a local .gguf file."""
    where, kwargs = _split_source(source)
    try:
        with shared_gguf_parses():
            return AutoTokenizer.from_pretrained(where, **kwargs)
    except (OSError, ValueError) as err:
        if Path(where).exists():
            raise
        raise _offline_hint(source, err) from err


def load_teacher(source: str, dtype: torch.dtype = torch.float32, config_only: bool = False, seed: int = 0):
    """Load a causal LM teacher (eval mode, no grad) from a hub id, a directory or a .gguf file.

    The architecture is checked against the supported adapters from the config, before any
    weights are fetched. `config_only=True` builds the architecture with weights drawn from
    `seed`: for configs whose weights are not available (Pythia-70M offline) and for tests.
    """
    where, kwargs = _split_source(source)
    if kwargs:
        read_gguf(source)  # a truncated file: one line, not a reshape error from the loader
    try:
        # a GGUF's config costs as much as its weights (~15 s), so check it after loading
        with shared_gguf_parses():
            config = None if (kwargs and not config_only) else AutoConfig.from_pretrained(where, **kwargs)
        if config is not None:
            get_adapter(config)
        if config_only:
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        else:
            with shared_gguf_parses():
                model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **kwargs)
    except (OSError, ValueError) as err:
        if Path(where).is_dir() and not kwargs and "no file named" in str(err):
            raise FileNotFoundError(
                f"teacher directory {where} has a config but no weights: set teacher.random_init: true to use "
                "random weights of that architecture, or give a directory with model.safetensors") from None
        if Path(where).exists() or str(err).startswith("unsupported teacher architecture"):
            raise
        raise _offline_hint(source, err) from err
    get_adapter(model)
    model.eval().requires_grad_(False)
    return model


PROVENANCE = "teacher.json"


def save_teacher(cfg: TeacherConfig, out: Path) -> dict:
    """Write the teacher of `cfg` as a plain HF directory (fp32 safetensors, config, tokenizer) plus
    `teacher.json` (source, random_init, seed, family, weights hash) into `out`, an empty directory.

    Later stages load this directory (`load_teacher(out)`): a local copy loads in a second where a
    GGUF dequantises for ~20 s, and every stage sees exactly the same weights."""
    model = load_teacher(cfg.source, config_only=cfg.random_init, seed=cfg.seed)
    tokenizer = load_tokenizer(cfg.source)
    # a GGUF teacher is dequantised to plain fp32 on load: its quantiser describes the file, not these weights
    model.hf_quantizer = None
    model.config.__dict__.pop("quantization_config", None)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    record = {"source": cfg.source, "random_init": cfg.random_init, "seed": cfg.seed,
              "family": get_adapter(model).family, "n_layers": len(get_adapter(model).layers(model)),
              "weights_hash": weights_hash(model)}
    (Path(out) / PROVENANCE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


def teacher_record(path: str | Path) -> dict:
    """The provenance `save_teacher` wrote next to a materialised teacher ({} for other sources)."""
    p = Path(path) / PROVENANCE
    return json.loads(p.read_text()) if p.is_file() else {}


def teacher_max_positions(source: str) -> int | None:
    """The teacher's maximum positions from its config (GGUF metadata read directly: fast)."""
    if source.endswith(".gguf"):
        where, _ = _split_source(source)  # a missing file: one line
        reader = read_gguf(source)

        def field(key):
            f = reader.fields.get(key)
            return None if f is None else f.contents()

        arch = field("general.architecture")
        value = field(f"{arch}.context_length") if arch else None
        return int(value) if value is not None else None

    where, kwargs = _split_source(source)
    try:
        config = AutoConfig.from_pretrained(where, **kwargs)
    except (OSError, ValueError) as err:
        if Path(where).exists():
            raise
        raise _offline_hint(source, err) from err
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    return None


def teacher_depth(source: str, materialised: str | Path | None = None) -> int | None:
    """The teacher's number of decoder layers, read from its config alone (a GGUF's metadata, a local
    directory's config.json, or the materialised teacher made from `source`); None when only a hub
    download could tell. Cheap: no weights are loaded."""
    if _is_gguf(source):
        if not Path(source).expanduser().is_file():
            return None
        reader = read_gguf(source)
        arch = reader.fields.get("general.architecture")
        count = reader.fields.get(f"{arch.contents()}.block_count") if arch is not None else None
        return int(count.contents()) if count is not None else None
    candidates = [Path(source).expanduser() / "config.json"]
    if materialised is not None and teacher_record(materialised).get("source") == source:
        candidates.append(Path(materialised) / "config.json")
    for config in candidates:
        try:
            raw = json.loads(config.read_text())
        except (OSError, ValueError):
            continue
        raw = raw.get("text_config", raw) if isinstance(raw, dict) else {}
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if isinstance(raw.get(key), int):
                return raw[key]
    return None


def weights_hash(model: nn.Module, max_bytes_per_tensor: int = 1 << 16) -> str:
    """A cheap content hash of a model's weights (names, shapes and a prefix of every tensor)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        flat = t.detach().reshape(-1).to(torch.float32).cpu().numpy().tobytes()
        h.update(flat[:max_bytes_per_tensor])
    return h.hexdigest()[:16]

