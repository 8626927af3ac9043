"""The student: the teacher's network with every attention block replaced by a Hyena operator.

`HyenaStudentForCausalLM` wraps the teacher's own architecture (rebuilt from its config, so
norms, MLPs, residual wiring and the LM head are exactly the teacher's code) and swaps each
layer's attention for a `HyenaMixer`. It is a regular `transformers` model: `save_pretrained`
writes safetensors plus a config recording the teacher and the Hyena settings, and after
`register()` (done at import) `AutoConfig` / `AutoModelForCausalLM` load it without
`trust_remote_code`.

Generation carries a `MixerCache` (hyena/model/cache.py): each mixer keeps its short conv's last taps
and its long filters' past inputs, so a new token costs one dot product per channel and layer
(O(L d)) instead of a forward pass over the whole prefix. The recurrent student
(`hyena.recurrence`) keeps a modal state instead (O(1) per token). Left-padded batches decode with
the cache too: the mixers zero their inputs at pads (hyena/model/cache.py), kept attention layers get the
mask and per-row positions. `use_cache=False` re-runs the whole sequence every step.

Building one from a teacher (`build_student`) is `hyena.model.build`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GenerationMixin,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers import initialization as hf_init
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from hyena.core.runtime import first_output
from hyena.model.cache import HyenaConvState, MixerCache, conv_forward, layer_state
from hyena.model.decode_step import fusable, layer_step
from hyena.model.multihyena import teacher_heads
from hyena.model.multihyena_mixer import MultiHyenaMixer
from hyena.model.operator import HyenaConfig, HyenaOperator, reset_hyena_parameters
from hyena.teachers import TeacherAdapter, causal_mask, get_adapter, position_inputs, sliding_window

MIXERS = ("hyena", "multihyena")
INITS = ("random", "teacher_attention")


class HyenaMixer(HyenaOperator):
    """A HyenaOperator that accepts the Hugging Face attention call and returns `(y, None)`.

    Positions (rotary cos/sin), attention masks and KV caches that the decoder layer passes are
    ignored: the implicit long filter encodes position by itself, and causality is built into the
    convolution. Right padding is therefore harmless (outputs at real tokens never see later
    positions); left padding would leak pads into the convolution, so without a cache
    `HyenaStudentForCausalLM.forward` rotates left-padded rows before they reach the mixers, and
    with one the cache tells the mixer which positions to zero (`MixerCache.set_input_mask`).
    """

    cache_kind = "hyena"  # the MixerCache layer state this mixer keeps (hyena/model/cache.py)
    layer_idx: int | None = None  # bound by the model's new_cache()

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, None]:
        state = layer_state(kwargs, self.layer_idx)
        if state is None:
            return super().forward(hidden_states), None  # (B, L, d), no attention weights
        if not isinstance(state, HyenaConvState):
            raise TypeError(f"decoder layer {self.layer_idx} is a Hyena mixer but its cache layer is a {type(state).__name__}")
        return conv_forward(self, hidden_states, state), None

    @torch.no_grad()
    def reset_hyena_parameters(self) -> None:
        """The reference Hyena initialisation (operator.reset_hyena_parameters)."""
        reset_hyena_parameters(self, self.cfg.sine_freq)


class HyenaStudentHFConfig(PretrainedConfig):
    """Config of a Hyena student. The teacher's architecture is kept verbatim as a dict.

    Top-level copies of a few teacher fields (vocab_size, hidden_size, ...) are what generation,
    lm-eval and the Auto classes look for; `max_position_embeddings` is the Hyena `max_len`,
    the longest sequence the student accepts.
    """

    model_type = "hyena_student"

    teacher_config: dict | None = None  # the teacher's config.to_dict(), including model_type
    teacher_source: str = ""  # where the teacher came from (hub id, directory or .gguf path)
    hyena: dict | None = None  # HyenaConfig.to_dict() of every mixer
    init: str = "random"  # how the mixers were initialised: "random" | "teacher_attention"
    mixer: str = "hyena"  # "hyena" (the paper's operator) | "multihyena" (per-head filters, hyena/model/multihyena.py)
    heads: int | None = None  # MultiHyena query heads (None: the teacher's)
    kv_heads: int | None = None  # MultiHyena key/value heads (None: the teacher's)
    keep_attention: list[int] | None = None  # decoder layers (1-based) that keep the teacher's attention
    vocab_size: int | None = None
    hidden_size: int | None = None
    num_hidden_layers: int | None = None
    max_position_embeddings: int | None = None
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    use_cache: bool = True  # generation carries a MixerCache (hyena/model/cache.py)

    def __post_init__(self, **kwargs):
        if self.init not in INITS:
            raise ValueError(f"student init must be one of {', '.join(INITS)} (got {self.init!r})")
        if self.mixer not in MIXERS:
            raise ValueError(f"student mixer must be one of {', '.join(MIXERS)} (got {self.mixer!r})")
        if self.teacher_config is not None:
            tc = self.teacher_config
            if "model_type" not in tc:
                raise ValueError("teacher_config must record the teacher's model_type")
            arch = self.teacher_architecture()  # read through its attribute_map (GPT-2: n_embd, n_layer)
            for key in ("vocab_size", "hidden_size", "num_hidden_layers", "tie_word_embeddings",
                        "bos_token_id", "eos_token_id", "pad_token_id"):
                if getattr(self, key) in (None, False) and getattr(arch, key, None) is not None:
                    setattr(self, key, getattr(arch, key))
        if self.hyena is not None:
            self.max_position_embeddings = self.hyena_config().max_len
        self.keep_attention = sorted(self.keep_attention or [])
        n = self.num_hidden_layers if self.teacher_config is not None else None  # the teacher's, read above
        if n is not None and any(not 1 <= k <= n for k in self.keep_attention):
            raise ValueError(f"keep_attention {self.keep_attention} names layers outside the teacher's 1..{n}")
        super().__post_init__(**kwargs)

    def is_hyena(self, i: int) -> bool:
        """Whether decoder layer i (0-based) has a Hyena mixer (else it kept the teacher's attention)."""
        return i + 1 not in (self.keep_attention or [])

    def hyena_config(self) -> HyenaConfig:
        return HyenaConfig(**(self.hyena or {}))

    def new_mixer(self, teacher_arch: PretrainedConfig) -> nn.Module:
        """One student mixer of this config's kind, at the teacher's width."""
        if self.mixer == "multihyena":
            heads, kv_heads = teacher_heads(teacher_arch)
            return MultiHyenaMixer(teacher_arch.hidden_size, self.heads or heads, self.kv_heads or kv_heads,
                                   self.hyena_config())
        return HyenaMixer(teacher_arch.hidden_size, self.hyena_config())

    def teacher_architecture(self) -> PretrainedConfig:
        """The teacher's config object rebuilt from the recorded dict."""
        tc = dict(self.teacher_config)
        model_type = tc.pop("model_type")
        if model_type not in CONFIG_MAPPING:
            raise ValueError(f"unknown teacher model_type {model_type!r} in the student config")
        return CONFIG_MAPPING[model_type].from_dict(tc)


class HyenaStudentForCausalLM(PreTrainedModel, GenerationMixin):
    """The teacher architecture (`self.backbone`, a *ForCausalLM) with Hyena mixers as attention.

    The backbone's rotary-embedding module stays (it has no trainable parameters and the
    backbone's forward calls it); its cos/sin output is ignored by every mixer, so a pure Hyena
    student has no rotary position encoding. A hybrid student (`config.keep_attention`) keeps the
    teacher's attention module, positions included, in the listed layers.
    """

    config_class = HyenaStudentHFConfig
    config: HyenaStudentHFConfig
    base_model_prefix = "backbone"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True  # the backbone builds masks; mixers ignore them
    _is_stateful = False

    def __init__(self, config: HyenaStudentHFConfig):
        super().__init__(config)
        if config.teacher_config is None:
            raise ValueError("HyenaStudentHFConfig.teacher_config is required to build a student")
        teacher_arch = config.teacher_architecture()
        self.adapter: TeacherAdapter = get_adapter(teacher_arch)
        self.backbone = AutoModelForCausalLM.from_config(teacher_arch)
        for i, layer in enumerate(self.adapter.layers(self.backbone)):
            if config.is_hyena(i):
                self.adapter.set_attention(layer, config.new_mixer(teacher_arch))
        self.post_init()
        self.generation_config.use_cache = True

    # --- transformers plumbing -------------------------------------------------------------

    @torch.no_grad()
    def initialize_weights(self):
        """Hyena modules get the Hyena initialisation before the backbone's generic `_init_weights`
        (normal(0, 0.02) for every Linear) could reach them; both skip loaded parameters."""
        with hf_init.guard_torch_init_functions():
            for module in self.modules():
                if hasattr(module, "reset_hyena_parameters") and not getattr(module, "_is_hf_initialized", False):
                    module.reset_hyena_parameters()
                    for sub in module.modules():
                        sub._is_hf_initialized = True
        super().initialize_weights()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # generate() must not build a KV cache: prepare_inputs_for_generation makes a MixerCache

    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.backbone.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.backbone.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.backbone.set_output_embeddings(value)

    def new_cache(self) -> MixerCache:
        """An empty decoding cache: one state per decoder layer, of the kind its mixer keeps (a
        Hyena mixer's `cache_kind`; a kept attention block gets a KV cache). Binds each mixer to
        its layer index."""
        kinds = []
        for i, layer in enumerate(self.decoder_layers()):
            mixer = self.adapter.attention(layer)
            kind = getattr(mixer, "cache_kind", "attention")
            if kind != "attention":
                mixer.layer_idx = i
            kinds.append(kind)
        return MixerCache.for_kinds(kinds)

    def forward(self, input_ids=None, attention_mask=None, labels=None, inputs_embeds=None,
                cache=None, use_cache=None, logits_to_keep=0, **kwargs):
        """Delegates to the backbone (logits, and the shifted CE loss when `labels` are given).

        Without a cache (and without `use_cache=True`) it runs the whole sequence statelessly.
        Left padding is then handled exactly: the mixers see no mask, so each row is rotated to
        put its real tokens first (pads after them cannot leak into a causal model without
        positions), run, and rotated back.

        With a cache (or `use_cache=True`, which starts one) the tokens continue the sequence the
        cache holds, and the output carries the cache as `cache`. A left-padded batch passes its
        2-D mask over the cached and new positions (as generate() does): the mixers zero the new
        pads, and rows are positioned from their first real token. `logits_to_keep` (int: the last
        N positions, 0 all) spares the vocabulary projection of positions nobody reads."""
        kwargs.pop("position_ids", None)  # positions are meaningless to the mixers
        if cache is None and not use_cache:
            shift = _leading_pads(attention_mask)
            if shift is not None:
                input_ids, inputs_embeds, labels, attention_mask = (
                    _rotate(t, -shift) for t in (input_ids, inputs_embeds, labels, attention_mask)
                )
            out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                                inputs_embeds=inputs_embeds, use_cache=False,
                                logits_to_keep=0 if shift is not None else logits_to_keep, **kwargs)
            if shift is not None:
                out.logits = slice_logits_to_keep(_rotate(out.logits, shift), logits_to_keep)
            return out
        cache = cache if isinstance(cache, MixerCache) else self.new_cache()
        T = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        positions = _row_positions(attention_mask, T)  # (B, T) for left-padded rows, else None
        cache.set_input_mask(None if positions is None else attention_mask[:, -T:])
        try:
            if cache.only_mixers() and labels is None and inputs_embeds is None and not _wants_extra_outputs(kwargs):
                return self._decode(input_ids, cache, logits_to_keep, positions)
            # kept attention layers: the padding mask and per-row positions, as transformers' generate gives them
            out = self.backbone(input_ids=input_ids, labels=labels, inputs_embeds=inputs_embeds,
                                attention_mask=attention_mask if positions is not None else None,
                                position_ids=positions, cache=cache, use_cache=True,
                                logits_to_keep=logits_to_keep, **kwargs)
        finally:
            cache.set_input_mask(None)  # the mask belongs to this chunk only
        out.cache = cache
        return out

    def _decode(self, input_ids: torch.Tensor, cache: MixerCache, logits_to_keep,
                positions: torch.Tensor | None = None) -> CausalLMOutputWithPast:
        """The backbone's forward without what the mixers ignore (masks, rotary tables, output
        capture): embedding, the decoder layers with the cache, final norm, the LM head on the
        positions kept. Only for models whose every layer is a Hyena mixer. `positions` (B, T):
        per-row positions of a left-padded batch (only learned absolute position embeddings read them)."""
        kwargs = {self.adapter.cache_kwarg: cache}
        h = self.embed(input_ids, start=cache.get_seq_length(), positions=positions)  # (B, T, d)
        for layer in self.decoder_layers():
            if h.shape[1] == 1 and fusable(layer):  # one new token in decode_layout: fewer kernels
                h = layer_step(layer, self.adapter.attention(layer), h, kwargs)
            else:
                h = first_output(layer(h, **kwargs))
        h = self.adapter.final_norm(self.backbone)(slice_logits_to_keep(h, logits_to_keep))
        return CausalLMOutputWithPast(logits=self.backbone.get_output_embeddings()(h), cache=cache)

    def prepare_inputs_for_generation(self, input_ids, cache=None, attention_mask=None, inputs_embeds=None,
                                      use_cache=None, logits_to_keep=None, **kwargs):
        """Feed only the tokens the cache has not absorbed yet (the whole prompt at first), with the
        attention mask (left-padded batches: the mixers zero pads, kept attention layers mask
        them). `use_cache=False` feeds the whole sequence every step, without a cache."""
        if use_cache is False:
            inputs = {"input_ids": input_ids, "use_cache": False}
        else:
            cache = cache if isinstance(cache, MixerCache) else self.new_cache()
            inputs = {"input_ids": input_ids[:, cache.get_seq_length():], "cache": cache, "use_cache": True}
        if attention_mask is not None:
            inputs["attention_mask"] = attention_mask
        if logits_to_keep is not None:
            inputs["logits_to_keep"] = logits_to_keep
        return inputs

    # --- helpers for the trainers --------------------------------------------------------

    def decoder_layers(self) -> nn.ModuleList:
        return self.adapter.layers(self.backbone)

    def mixer(self, i: int) -> nn.Module:
        """The sequence mixer of layer i (0-based): its HyenaMixer, or the teacher's attention in a
        layer the hybrid student kept."""
        return self.adapter.attention(self.decoder_layers()[i])

    def hyena_layers(self) -> list[int]:
        """The 0-based indices of the layers with a Hyena mixer."""
        return [i for i in range(len(self.decoder_layers())) if self.config.is_hyena(i)]

    def embed(self, input_ids: torch.Tensor, start: int = 0, positions: torch.Tensor | None = None) -> torch.Tensor:
        """What decoder layer 1 receives for input_ids (B, L) at positions start.. (or per-row
        `positions` (B, L)) -> (B, L, d); entry 0 of capture_layer_outputs (embedding dropout
        applies in training mode, as in the backbone)."""
        return self.adapter.embed(self.backbone, input_ids, start, positions)  # (B, L, d), position embeddings included

    def run_layer(self, i: int, hidden_states: torch.Tensor) -> torch.Tensor:
        """Output of decoder layer i (0-based) for its input (B, L, d) at positions 0..L-1.

        A Hyena layer needs no positions or masks (the rest of a layer is position-wise); a kept
        attention layer gets the rotary positions and causal mask the backbone would give it."""
        layer = self.decoder_layers()[i]
        if self.config.is_hyena(i):
            return first_output(layer(hidden_states))
        window = sliding_window(self.backbone, self.adapter.attention(layer))  # Mistral, Qwen2/3 layers
        return first_output(layer(hidden_states, attention_mask=causal_mask(self.backbone, hidden_states, window),
                                  **position_inputs(self.backbone, hidden_states)))


def _wants_extra_outputs(kwargs: dict) -> bool:
    return bool(kwargs.get("output_hidden_states") or kwargs.get("output_attentions"))


def _row_positions(attention_mask: torch.Tensor | None, T: int) -> torch.Tensor | None:
    """Positions (B, T) of the last T tokens, each row counted from its first real token (pads: 0),
    for a padded 2-D mask; None when no row is padded (positions then follow the cache length)."""
    if attention_mask is None or attention_mask.ndim != 2 or bool(attention_mask.all()):
        return None
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]


def _leading_pads(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """Per-row count of leading zeros of a 2-D padding mask (B,), or None when nothing to do."""
    if attention_mask is None or attention_mask.ndim != 2:
        return None
    leading = (attention_mask.cumsum(-1) == 0).sum(-1)  # (B,)
    return leading if bool(leading.any()) else None


def _rotate(t: torch.Tensor | None, shift: torch.Tensor) -> torch.Tensor | None:
    """Roll each row b of t (B, L, ...) along L by shift[b]: out[b, i] = t[b, (i - shift[b]) % L]."""
    if t is None:
        return None
    L = t.shape[1]
    idx = (torch.arange(L, device=t.device)[None, :] - shift[:, None].to(t.device)) % L  # (B, L)
    idx = idx.view(*idx.shape, *([1] * (t.ndim - 2))).expand(-1, -1, *t.shape[2:])
    return t.gather(1, idx)


def register() -> None:
    """Make AutoConfig / AutoModelForCausalLM know "hyena_student" (idempotent)."""
    try:
        AutoConfig.register(HyenaStudentHFConfig.model_type, HyenaStudentHFConfig)
    except ValueError:  # already registered
        pass
    try:
        AutoModelForCausalLM.register(HyenaStudentHFConfig, HyenaStudentForCausalLM)
    except ValueError:
        pass


register()
