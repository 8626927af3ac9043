"""Long context: filter decay in absolute tokens, perplexity by position, passkey retrieval."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hyena.evaluate import passkey, positions
from hyena.evaluate.perplexity import stream_perplexity
from hyena.evaluate.report import flat_metrics, positions_table, render_report
from hyena.model.operator import HyenaConfig, HyenaFilter, positional_embedding


def _filter(**kw) -> HyenaFilter:
    torch.manual_seed(0)
    return HyenaFilter(8, 1, HyenaConfig(**kw))


def test_decay_len_zero_is_the_reference_window():
    """decay_len 0 keeps the reference clock t = n / (max_len - 1): filters bit-identical to
    FFN(z) * exp(-|delta| t) computed by hand."""
    f = _filter(max_len=512)
    L = 300
    t, z = positional_embedding(L, 33, 512)
    raw = torch.matmul(f.ffn[-1].weight, f.ffn[:-1](z).mT)  # (d, L)
    want = raw * torch.exp(-f.decay_rates()[:, None] * t.mT)
    assert torch.equal(f(L)[0], want)


def test_decay_len_puts_the_window_in_absolute_tokens():
    """With decay_len the slowest channel reaches decay_target at slow_decay_pct * decay_len
    tokens, whatever max_len is; and the filters past that point carry almost no weight."""
    for max_len in (1024, 8192):
        f = _filter(max_len=max_len, decay_len=100, filter_order=16)
        n = torch.arange(max_len, dtype=torch.float32)
        t = n / (max_len - 1)
        window = torch.exp(-f.decay_rates()[:, None] * f.decay_time(t[:, None]).mT)  # (d, L)
        assert window[0, 150].item() == pytest.approx(0.01, rel=1e-4)  # slowest: 1.5 * 100 tokens
        assert window[-1, 30].item() == pytest.approx(0.01, rel=1e-4)  # fastest: 0.3 * 100 tokens
        h = f(max_len)[0]  # (d, L)
        tail = h[:, 300:].pow(2).sum() / h.pow(2).sum()
        assert tail < 1e-4, tail
    reference = _filter(max_len=8192, filter_order=16)(8192)[0]
    assert reference[:, 300:].pow(2).sum() / reference.pow(2).sum() > 0.5  # the reference spreads over max_len


def test_buckets_double_and_cover_every_scored_position():
    assert positions.buckets(8192, 256) == [(1, 256), (256, 512), (512, 1024), (1024, 2048), (2048, 4096), (4096, 8192)]
    assert positions.buckets(100, 16) == [(1, 16), (16, 32), (32, 64), (64, 100)]
    assert [positions.bucket_label(*b) for b in positions.buckets(4096, 256)] == [
        "0-256", "256-512", "512-1K", "1K-2K", "2K-4K"]


def test_windows_are_shared_over_documents_and_spread_over_each():
    docs = [np.arange(100), np.arange(1000, 1030), np.arange(2000, 2250)]
    # shares 3/1/2 of 5/1/12 windows: doc 0 at the centres of thirds (windows 0, 2, 4), doc 2 of halves (3, 9)
    w = positions.cut_windows(docs, 20, 6)
    assert [int(r[0]) for r in w] == [0, 1000, 2060, 40, 2180, 80]
    assert all((r == np.arange(r[0], r[0] + 20)).all() for r in w)  # whole, contiguous windows
    one_each = positions.cut_windows(docs, 20, 3)  # one window per document: its middle, not its opening
    assert [int(r[0]) for r in one_each] == [40, 1000, 2120]
    assert len(positions.cut_windows(docs, 20, 100)) == 5 + 1 + 12  # capped at what the documents hold
    with pytest.raises(ValueError, match="no document has 500 tokens"):
        positions.cut_windows(docs, 500, 2)


def test_position_curve_sums_to_the_window_perplexity(tiny_neox):
    """Every scored token lands in exactly one bucket: the token-weighted buckets give back the
    plain windowed perplexity of the same windows."""
    g = torch.Generator().manual_seed(0)
    stream = torch.randint(0, 50304, (3 * 64,), generator=g).numpy()
    windows = stream.reshape(3, 64).astype(np.int64)
    nll = positions.position_nll(tiny_neox, windows)
    rows = positions.bucket_perplexities(nll, 3, 8)
    assert sum(r["n_scored"] for r in rows) == 3 * 63
    total = sum(math.log(r["ppl"]) * r["n_scored"] for r in rows)
    want = stream_perplexity(tiny_neox, stream, context=64)
    assert total == pytest.approx(want.nll_sum, rel=1e-5)


class _Oracle(torch.nn.Module):
    """Predicts whatever token follows in its own input (a perfect retriever), or always token 0."""

    def __init__(self, perfect: bool):
        super().__init__()
        self.perfect = perfect

    def forward(self, input_ids, use_cache=False, logits_to_keep=0):
        logits = torch.zeros(*input_ids.shape, 32000)
        if self.perfect:
            logits[0, torch.arange(input_ids.shape[1] - 1), input_ids[0, 1:]] = 1.0
        return type("Out", (), {"logits": logits[:, -logits_to_keep:]})()  # as transformers slices (0: all)


def test_passkey_prompt_has_the_length_key_and_depth(smollm_tokenizer):
    cfg = passkey.PasskeyConfig(lengths=[1024], trials=3, seed=1)
    trial_list = passkey.trials(cfg, 1024)
    assert trial_list == passkey.trials(cfg, 1024)  # every model sees the same keys and depths
    assert [d for d, _ in trial_list] == pytest.approx([1 / 6, 0.5, 5 / 6])
    for depth, key in trial_list:
        prompt, answer = passkey.build_trial(smollm_tokenizer, 1024, depth, key)
        assert 900 <= len(prompt) + len(answer) <= 1024
        assert smollm_tokenizer.decode(answer).strip() == str(key)
        text = smollm_tokenizer.decode(prompt)
        at = text.index(f"The pass key is {key}.") / len(text)
        assert abs(at - depth) < 0.05, (at, depth)
        assert text.endswith("What is the pass key? The pass key is")
        a, b = passkey.needle_span(smollm_tokenizer, 1024, depth, key)
        assert smollm_tokenizer.decode(prompt[a:b]).strip() == passkey.NEEDLE.format(key=key).strip()


def test_passkey_counts_only_a_fully_retrieved_key(smollm_tokenizer):
    cfg = passkey.PasskeyConfig(lengths=[256, 512], trials=2)
    good = passkey.model_passkey(_Oracle(True), smollm_tokenizer, cfg, "cpu", "oracle", max_positions=None)
    bad = passkey.model_passkey(_Oracle(False), smollm_tokenizer, cfg, "cpu", "zero", max_positions=300)
    assert good == {"256": {"acc": 1.0, "correct": 2, "trials": 2}, "512": {"acc": 1.0, "correct": 2, "trials": 2}}
    assert bad["256"]["acc"] == 0.0 and "na" in bad["512"]


def test_report_gives_the_curve_its_ratios_and_passkey_rows():
    def curve(scale):
        return {"windows": 2, "context": 1024, "buckets": [
            {"lo": 1, "hi": 256, "label": "0-256", "n_scored": 510, "ppl": 20.0 * scale},
            {"lo": 256, "hi": 512, "label": "256-512", "n_scored": 512, "ppl": 18.0 * scale},
            {"lo": 512, "hi": 1024, "label": "512-1K", "n_scored": 1024, "ppl": 16.0 * scale * scale}]}

    results = {"settings": {"context": 512, "datasets": [], "positions": {"source": "books"}},
               "models": {"teacher": {"positions": curve(1), "passkey": {"1024": {"acc": 1.0, "correct": 5, "trials": 5}}},
                          "student": {"positions": curve(3), "passkey": {"1024": {"acc": 0.2, "correct": 1, "trials": 5}}},
                          "short": {"positions": {"na": "windows of 1024 tokens exceed the model's 512 positions"}}}}
    m = flat_metrics(results)
    assert m["pos_ratio/0-256/student"] == 3.0 and m["pos_ratio/512-1K/student"] == 9.0
    assert m["passkey/1024/student"] == 0.2 and "pos_ratio/0-256/teacher" not in m
    table = "\n".join(positions_table(results))
    assert "| 512-1K | 16.0 | 144.0 | 9.00 |" in table and "`short`: windows of 1024" in table
    assert "| passkey @ 1K tokens | 1.00 (5/5) | 0.20 (1/5) | –" in render_report(results)


def test_student_with_decay_len_keeps_features_stationary_past_the_window():
    """Past a few decay lengths, shifting the input in time shifts the mixer's features by the same
    amount: what the readout saw inside the window is what it sees further out. The reference
    window (t normalised to max_len) breaks this: its long taps still weigh."""
    from hyena.model.operator import HyenaOperator

    def shift_error(cfg):
        torch.manual_seed(0)
        op = HyenaOperator(16, cfg).eval()
        u = torch.randn(1, 96, 16)
        far = torch.cat([torch.randn(1, 900, 16), u], dim=1)  # the same 96 tokens after 900 others
        with torch.no_grad():
            a, b = op.features(u)[..., 64:], op.features(far)[..., -32:]
        return ((a - b).norm() / a.norm()).item()

    assert shift_error(HyenaConfig(max_len=1024, decay_len=16, filter_order=16)) < 1e-3
    assert shift_error(HyenaConfig(max_len=1024, filter_order=16)) > 0.1



def test_documents_too_short_for_the_window_are_na_not_a_failed_eval(tiny_neox):
    from hyena.evaluate.runner import EvalConfig, model_long_context

    cfg = EvalConfig()
    assert model_long_context(tiny_neox, "eval.positions: no document has 8192 tokens", cfg, "cpu", "m") == {
        "na": "eval.positions: no document has 8192 tokens"}
    windows = np.zeros((1, 4096), dtype=np.int64)  # longer than the tiny model's positions
    assert "exceed" in model_long_context(tiny_neox, windows, cfg, "cpu", "m")["na"]


def _probe_eval_config(tmp_path, model, tokenizer, models: list[str], **kw):
    """An EvalConfig over `model` saved once under each name, with a 64-token Table 1, a 256-token
    position curve and 128-token passkeys, on small text files."""
    from hyena.evaluate.runner import EvalConfig

    model_dir = tmp_path / "m"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "book.txt").write_text("It was a dark and stormy night; the rain fell in torrents. " * 200)
    (tmp_path / "wiki.txt").write_text("The quick brown fox jumps over the lazy dog. " * 40)
    skip = kw.pop("skip", [])
    return EvalConfig(
        models={n: str(model_dir) for n in models}, context=64, max_windows=1,
        datasets={"wiki": str(tmp_path / "wiki.txt")}, long_contexts=[], long_context_datasets=[], tasks=[], reference="",
        positions=positions.PositionsConfig(source=str(tmp_path / "docs"), context=256, windows=1, first_bucket=32,
                                            skip_models=skip + ["dropped-by-an-experiment"]),
        passkey=passkey.PasskeyConfig(lengths=[128], trials=1, skip_models=skip), **kw)


def test_bf16_probes_change_only_the_curve_and_say_so(tmp_path, tiny_llama, smollm_tokenizer):
    """eval.probe_precision bf16: the position curve runs under bf16 autocast (close to fp32, not
    equal to it), Table 1 stays fp32 to the bit, and the report says which precision the probes used."""
    from hyena.evaluate.runner import evaluate_models

    cfg = _probe_eval_config(tmp_path, tiny_llama, smollm_tokenizer, ["m"])
    fp32 = evaluate_models(cfg)["models"]["m"]
    cfg.probe_precision = "bf16"
    res = evaluate_models(cfg)
    bf16 = res["models"]["m"]
    assert bf16["ppl"] == fp32["ppl"]
    a, b = ([r["ppl"] for r in m["positions"]["buckets"]] for m in (fp32, bf16))
    assert a != b and b == pytest.approx(a, rel=0.03)
    assert "acc" in bf16["passkey"]["128"]
    assert render_report(res).count("bf16 autocast (eval.probe_precision)") == 2  # the curve and the passkey rows


def test_bf16_probes_leave_no_bf16_filters_for_the_fp32_scoring_after_them(tiny_llama):
    """Hyena filters are cached at inference whatever precision made them: a bf16 probe must not
    leave its filters to the fp32 tasks after it. The forward after the probe equals a fresh fp32
    forward to the bit, and a probe with a cache made in fp32 makes its own."""
    from hyena.evaluate.runner import probe_autocast
    from hyena.model.build import StudentConfig, build_student

    torch.manual_seed(0)
    student = build_student(tiny_llama, StudentConfig(init="random")).eval()
    ids = torch.randint(0, 1000, (1, 96))
    with torch.no_grad():
        fresh = student(input_ids=ids).logits
        with probe_autocast("bf16", "cpu", student):
            probed = student(input_ids=ids).logits.float()
        after = student(input_ids=ids).logits
    assert torch.equal(after, fresh)
    assert not torch.equal(probed, fresh) and torch.allclose(probed, fresh, rtol=0.05, atol=0.05)


def test_skipped_models_keep_table1_but_get_no_curve_or_keys(tmp_path, tiny_llama, smollm_tokenizer):
    """eval.positions.skip_models / eval.passkey.skip_models: the named model still gets its Table 1
    perplexity; its curve and keys are marked skipped, not run; a name not in eval.models is ignored."""
    from hyena.evaluate.runner import evaluate_models

    cfg = _probe_eval_config(tmp_path, tiny_llama, smollm_tokenizer, ["kept", "skipped"], skip=["skipped"])
    res = evaluate_models(cfg)
    kept, skipped = res["models"]["kept"], res["models"]["skipped"]
    assert skipped["ppl"]["wiki"]["64"]["ppl"] == pytest.approx(kept["ppl"]["wiki"]["64"]["ppl"])
    assert kept["positions"]["buckets"] and "acc" in kept["passkey"]["128"]
    assert skipped["positions"] == {"na": "skipped (eval.positions.skip_models)"}
    assert skipped["passkey"] == {"128": {"na": "skipped (eval.passkey.skip_models)"}}
    report = render_report(res)
    assert "`skipped`: skipped (eval.positions.skip_models)" in report and "n/a (skipped (eval.passkey" in report
    assert not [k for k in flat_metrics(res) if k.endswith("/skipped") and k.startswith(("pos_", "passkey/"))]
