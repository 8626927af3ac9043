"""Teachers: load a pretrained decoder-only transformer and know where its parts are.

One small adapter per architecture family says where the decoder layers are, which attribute of
a layer is the attention, which modules produce the embedding output that feeds layer 1, and
how to call one layer on hidden states. Everything else in the project goes through it.

Supported families: GPT-NeoX (Pythia), Llama (SmolLM2), Mistral, Qwen2, Qwen3 and GPT-2. Adding
one is a module beside `neox.py` registered in `families.py` (see there).

Modules: `adapter` (the adapter and projection types), `neox`, `llama`, `gpt2` (the families),
`families` (the registry), `loading` (hub, directory, GGUF; materialising; provenance) and
`hooks` (capturing layer outputs, running one attention alone).
"""

from hyena.teachers.adapter import AttentionProjections, TeacherAdapter
from hyena.teachers.families import ADAPTERS, attention_projections, get_adapter
from hyena.teachers.hooks import (
                                  attention_output,
                                  capture,
                                  capture_layer_outputs,
                                  causal_mask,
                                  position_inputs,
                                  sliding_window,
)
from hyena.teachers.loading import (
                                  GGUF_FIX,
                                  PROVENANCE,
                                  TOKENIZER_FILES,
                                  TeacherConfig,
                                  copy_tokenizer,
                                  has_tokenizer,
                                  load_teacher,
                                  load_tokenizer,
                                  read_gguf,
                                  save_teacher,
                                  teacher_depth,
                                  teacher_max_positions,
                                  teacher_record,
                                  weights_hash,
)

__all__ = ["ADAPTERS", "GGUF_FIX", "PROVENANCE", "TOKENIZER_FILES", "AttentionProjections", "TeacherAdapter",
           "TeacherConfig", "attention_output", "attention_projections", "capture", "capture_layer_outputs",
           "causal_mask", "copy_tokenizer", "get_adapter", "has_tokenizer", "load_teacher", "load_tokenizer",
           "position_inputs", "read_gguf", "save_teacher", "sliding_window", "teacher_depth",
           "teacher_max_positions", "teacher_record", "weights_hash"]
