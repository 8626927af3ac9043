"""Batched, left-padded generate() with the students' caches: each row of a padded batch decodes as
that prompt alone (greedy tokens, logits to rounding), for every teacher family and every mixer
kind (convolutional, recurrent, and hybrids of each with a kept attention layer); sampling and
per-row EOS stopping on the same path; and the cache is really used (one token a step)."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_CONFIGS, tiny_teacher

from hyena.model.build import StudentConfig, build_student
from hyena.model.operator import HyenaConfig
from hyena.recurrence.modal import ModalFitConfig
from hyena.recurrence.model import RecurrentConfig, to_recurrent

PAD = 0
LENGTHS = (12, 5, 9, 1)  # one prompt shorter than the short conv's taps
NEW = 8


def make_model(family: str, kind: str):
    """kind: student | recurrent | hybrid (conv student keeping layer 2's attention) | hybrid-recurrent."""
    hybrid = kind.startswith("hybrid")
    teacher = tiny_teacher(family, seed=5, layers=3)
    model = build_student(teacher, StudentConfig(hyena=HyenaConfig(max_len=128, emb_dim=3),
                                                 keep_attention=[2] if hybrid else []))
    if kind in ("recurrent", "hybrid-recurrent"):
        model, _ = to_recurrent(model, RecurrentConfig(fit_len=128, fit=ModalFitConfig(order=8, steps=0)),
                                progress=False)
    return model.eval()


def left_padded(prompts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention_mask), both (B, max length), pads on the left."""
    L = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), L), PAD, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, p in enumerate(prompts):
        ids[b, L - len(p):], mask[b, L - len(p):] = p, 1
    return ids, mask


def prompts_of(lengths, seed=1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 512, (n,), generator=g) for n in lengths]


def greedy(model, ids, mask, **kw):
    out = model.generate(ids, attention_mask=mask, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                         pad_token_id=PAD, output_logits=True, return_dict_in_generate=True, **kw)
    return out.sequences[:, ids.shape[1]:], torch.stack(out.logits, dim=1)  # (B, NEW), (B, NEW, V)


def fed_lengths(model):
    fed = []
    handle = model.register_forward_pre_hook(
        lambda _m, args, kwargs: fed.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    return fed, handle


@pytest.mark.parametrize("kind", ["student", "recurrent", "hybrid", "hybrid-recurrent"])
@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
@torch.no_grad()
def test_padded_batch_rows_equal_each_prompt_alone(family, kind):
    model = make_model(family, kind)
    prompts = prompts_of(LENGTHS)
    ids, mask = left_padded(prompts)
    fed, handle = fed_lengths(model)
    try:
        tokens, logits = greedy(model, ids, mask)
    finally:
        handle.remove()
    assert fed == [ids.shape[1]] + [1] * (NEW - 1), fed  # the cache is used: the prefix is not re-run
    for b, p in enumerate(prompts):
        alone_tokens, alone_logits = greedy(model, p[None], torch.ones(1, len(p), dtype=torch.long))
        torch.testing.assert_close(logits[b], alone_logits[0], rtol=1e-4, atol=1e-4)
        assert torch.equal(tokens[b], alone_tokens[0]), (b, tokens[b], alone_tokens[0])


@pytest.mark.parametrize("kind", ["student", "recurrent", "hybrid-recurrent"])
@pytest.mark.parametrize("family", ["llama", "gpt2"])
@torch.no_grad()
def test_sampled_padded_batch_with_cache_equals_the_uncached_pass(family, kind):
    """Same seed, same batch: the cached path draws the same tokens as re-running the whole
    (rotated, exact) sequence every step, so sampling sees the same distributions."""
    model = make_model(family, kind)
    ids, mask = left_padded(prompts_of((10, 4, 7), seed=3))

    def sample(use_cache: bool) -> torch.Tensor:
        torch.manual_seed(11)
        return model.generate(ids, attention_mask=mask, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=True,
                              top_k=0, temperature=1.0, pad_token_id=PAD, use_cache=use_cache)

    fed, handle = fed_lengths(model)
    try:
        cached = sample(True)
    finally:
        handle.remove()
    assert fed == [ids.shape[1]] + [1] * (NEW - 1), fed  # the cached path, not the re-run prefix
    assert torch.equal(cached, sample(False))


@pytest.mark.parametrize("kind", ["student", "recurrent"])
@torch.no_grad()
def test_rows_stop_at_eos_independently(kind):
    model = make_model("llama", kind)
    prompts = prompts_of((9, 4), seed=5)
    ids, mask = left_padded(prompts)
    free, _ = greedy(model, ids, mask)
    eos = int(free[1, 2])  # the short prompt's third token ends it
    fed, handle = fed_lengths(model)
    try:
        out = model.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, pad_token_id=PAD,
                             eos_token_id=eos)[:, ids.shape[1]:]
    finally:
        handle.remove()
    assert fed[0] == ids.shape[1] and set(fed[1:]) == {1}, fed  # with the cache
    stop = int((free[1] == eos).nonzero()[0])
    assert torch.equal(out[1, : stop + 1], free[1, : stop + 1]) and bool((out[1, stop + 1:] == PAD).all())
    first_eos = (free[0] == eos).nonzero()
    end = int(first_eos[0]) + 1 if len(first_eos) else NEW  # the long row runs on to its own EOS or the limit
    assert torch.equal(out[0, :end], free[0, :end])


@torch.no_grad()
def test_generate_cli_prompts_file_in_padded_batches(tmp_path, pythia_tokenizer):
    """`generate --prompts-file` (text lines or jsonl) writes one JSON line per prompt whose tokens
    are the prompt's greedy continuation alone, in left-padded cached batches with tokens/s."""
    import json

    from conftest import tiny_neox_config
    from transformers import AutoModelForCausalLM
    from typer.testing import CliRunner

    from hyena.model.generation import Sampling, generate
    from tools.generate import app

    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(tiny_neox_config(layers=1, d=32)).eval()
    student = build_student(teacher, StudentConfig(hyena=HyenaConfig(max_len=128, emb_dim=3)))
    model, _ = to_recurrent(student, RecurrentConfig(fit_len=128, fit=ModalFitConfig(order=8, steps=0)), progress=False)
    model.generation_config.eos_token_id = None  # random weights: run every row to the limit
    model.save_pretrained(tmp_path / "model")
    pythia_tokenizer.save_pretrained(tmp_path / "model")
    texts = ["The city of Paris is", "Once", "A long time ago in a galaxy far"]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    (tmp_path / "p.txt").write_text("\n".join(texts) + "\n\n")
    for src in ("p.jsonl", "p.txt"):
        out = tmp_path / f"{src}.out.jsonl"
        res = CliRunner().invoke(app, ["--model", str(tmp_path / "model"), "--prompts-file", str(tmp_path / src),
                                       "--batch-size", "2", "--greedy", "--max-new-tokens", "6", "--output", str(out)])
        assert res.exit_code == 0, res.output
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["prompt"] for r in rows] == texts and [r["batch"] for r in rows] == [0, 0, 1]
        assert all(r["new_tokens"] == 6 and r["batch_tokens_per_s"] > 0 for r in rows)
        for r in rows:
            ids = torch.tensor([pythia_tokenizer.encode(r["prompt"])])
            alone, _ = generate(model, ids, 6, Sampling(greedy=True))
            assert r["completion"] == pythia_tokenizer.decode(alone[0], skip_special_tokens=True)
