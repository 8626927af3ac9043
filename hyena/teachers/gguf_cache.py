"""One parse per GGUF file per process.

transformers reads a .gguf file's metadata with a new `gguf.GGUFReader` for the config, again for
the weights and again for the tokenizer, and rebuilds gguf's tensor-name map for every module of
the model. For SmolLM2-135M each parse walks the 49K-token vocabulary and the merges (~440K
fields, ~4 s on one core) and the name maps cost ~6 s more: ~20 s of a GGUF teacher's load that
decodes nothing. Inside `shared_gguf_parses()` every reader of the same unchanged file is the
first one, and the name map of an (architecture, depth) is built once.
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path


def _file_key(path: str | os.PathLike) -> tuple[str, int, int]:
    p = Path(path).resolve()
    st = p.stat()
    return str(p), st.st_size, st.st_mtime_ns  # a rewritten file is parsed again


@functools.lru_cache(maxsize=1)  # the parsed fields of one vocabulary are ~100 MB of small objects
def _parsed(key: tuple[str, int, int], mode: str):
    from gguf.gguf_reader import GGUFReader  # the class itself, also while the package's name is patched

    return GGUFReader(key[0], mode)


def gguf_reader(path: str | os.PathLike, mode: str = "r"):
    """The `gguf.GGUFReader` of `path`, parsed once while the file is unchanged."""
    return _parsed(_file_key(path), mode)


@contextlib.contextmanager
def shared_gguf_parses():
    """Within the block, `gguf.GGUFReader(path)` returns the cached reader of that file and
    `gguf.get_tensor_name_map` is memoised, for every caller (transformers imports both from
    `gguf` at call time)."""
    import gguf

    saved = gguf.GGUFReader, gguf.get_tensor_name_map
    gguf.GGUFReader = gguf_reader
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=4)(saved[1])
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = saved
