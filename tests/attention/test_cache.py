"""KV caches for long inputs and smaller caches: attention sinks + window (with the sink keys
re-rotated), heavy hitters (H2O), KIVI int8/int4; generate and stream perplexity with them."""
import math

import pytest
import torch

from slimformer.attention.cache import HeavyHitterLayer, QuantizedKVLayer, cache_bytes, kv_cache, shift_rope
from slimformer.evaluate.streaming import stream_perplexity
from slimformer.core.errors import ConfigError
from slimformer.testing.slim import tiny_slim


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, 99, (1, 90), generator=torch.Generator().manual_seed(0))


def one_pass_ppl(sm, ids):
    with torch.no_grad():
        logits = sm.model(input_ids=ids).logits[0]
    return math.exp(torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:]).item())


def test_shift_rope_composes_rotations():
    inv = 1.0 / 10000 ** (torch.arange(0, 8, 2).float() / 8)
    k = torch.randn(1, 1, 3, 8)
    assert torch.allclose(shift_rope(shift_rope(k, inv, 5), inv, -5), k, atol=1e-5)
    assert torch.allclose(shift_rope(shift_rope(k, inv, 2), inv, 3), shift_rope(k, inv, 5), atol=1e-5)


def test_heavy_hitters_keep_the_most_attended_keys_rerotated_before_the_window():
    """H2O with rotary keys: after eviction the cache returns the heavy keys (the most attended)
    and the window, each key rotated to a contiguous position ending at the newest token."""
    inv = 1.0 / 10000 ** (torch.arange(0, 8, 2).float() / 8)
    raw = torch.randn(1, 1, 12, 8, generator=torch.Generator().manual_seed(1))      # un-rotated keys
    layer = HeavyHitterLayer(heavy=2, window=3, inv_freq=inv)
    favourite = {1, 4}                                                                # receive most attention
    for i in range(12):
        k = shift_rope(raw[:, :, i:i + 1], inv, i)                                    # rotated at position i
        keys, values = layer.update(k, k.clone())
        length = keys.shape[2]
        received = torch.tensor([1.0 if p in favourite else 0.1 for p in layer.pos[0, 0].tolist()])
        layer.observe(received.view(1, 1, length))
    kept = layer.pos[0, 0].tolist()
    assert kept == [1, 4, 8, 9, 10, 11]             # heavy 2 + window 3, then the newest token
    expect = torch.cat([shift_rope(raw[:, :, p:p + 1], inv, 6 + j) for j, p in enumerate(kept)], dim=2)
    assert torch.allclose(keys, expect, atol=1e-5)
    assert torch.equal(values[0, 0, :, 0], torch.cat([shift_rope(raw[:, :, p:p + 1], inv, p) for p in kept], 2)[0, 0, :, 0])


@pytest.mark.parametrize("kind,opts", [("full", {}), ("sinks", {"sinks": 4, "window": 200}),
                                       ("h2o", {"heavy": 50, "window": 50}), ("int8", {}),
                                       ("int4", {"group": 64, "residual": 64})])
def test_caches_that_hold_everything_equal_one_pass(ids, kind, opts):
    sm = tiny_slim("llama", "causal-lm")
    ref = one_pass_ppl(sm, ids)
    got = stream_perplexity(sm, ids, kv_cache(sm, kind, **opts), chunk=7)
    assert got["tokens"] == 89 and got["perplexity"] == pytest.approx(ref, rel=1e-4)


def test_sink_window_equals_recomputing_sinks_plus_window_with_contiguous_positions(ids):
    """StreamingLLM's invariant, exactly checkable with one layer (its keys depend only on the
    token and position): after evictions, the last token's logits equal a fresh forward of the
    sink tokens + the window at positions 0.. (the sinks re-rotated to sit before the window)."""
    sm = tiny_slim("llama", "causal-lm", num_hidden_layers=1)
    cache = kv_cache(sm, "sinks", sinks=2, window=8)
    with torch.no_grad():
        for i in range(30):
            pos = torch.tensor([i])
            out = sm.model(input_ids=ids[:, i:i + 1], past_key_values=cache, cache_position=pos, position_ids=pos[None])
        fresh = sm.model(input_ids=torch.cat([ids[:, :2], ids[:, 21:30]], 1)).logits[0, -1]
    assert cache.layers[0].keys.shape[2] == 10 and cache.layers[0].evicted == 20
    assert torch.allclose(out.logits[0, -1], fresh, atol=1e-4)


def test_bounded_caches_stay_flat_as_the_input_grows():
    sm = tiny_slim("llama", "causal-lm")
    long = torch.randint(3, 99, (1, 400), generator=torch.Generator().manual_seed(1))
    peaks = {}
    for kind, opts in (("full", {}), ("sinks", {"sinks": 4, "window": 28}), ("h2o", {"heavy": 8, "window": 24})):
        peaks[kind] = [stream_perplexity(sm, long[:, :n], kv_cache(sm, kind, **opts), chunk=8)["peak_cache_bytes"]
                       for n in (100, 400)]
    assert peaks["full"][1] > 3.5 * peaks["full"][0]
    assert peaks["sinks"][1] == peaks["sinks"][0] and peaks["h2o"][1] == peaks["h2o"][0]


def test_kivi_quantizes_keys_per_channel_and_values_per_token_and_saves_bytes():
    torch.manual_seed(0)
    k = torch.randn(1, 2, 200, 16) * torch.linspace(0.1, 5, 16)                 # channel-wise key outliers
    v = torch.randn(1, 2, 200, 16)
    sizes = {}
    for bits in (8, 4):
        layer = QuantizedKVLayer(bits, group=32, residual=16)
        layer.update(k, v)
        out_k, out_v = layer.update(k[:, :, :0], v[:, :, :0])                     # what the next step sees
        rel = ((out_k - k).norm() / k.norm()).item(), ((out_v - v).norm() / v.norm()).item()
        assert rel[0] < (0.01 if bits == 8 else 0.12) and rel[1] < (0.01 if bits == 8 else 0.12), (bits, rel)
        assert torch.equal(out_k[:, :, -16:], k[:, :, -16:])                       # the recent tail stays exact
        assert layer.get_seq_length() == 200
        sizes[bits] = layer.nbytes()
    # 160 of the 200 tokens are in codes (5 blocks of 32), the last 40 in float32
    fp32 = 2 * k.numel() * 4
    assert sizes[8] < (0.2 + 0.8 * 0.32) * fp32 and sizes[4] < (0.2 + 0.8 * 0.2) * fp32 and sizes[4] < sizes[8]


def test_generate_with_caches(ids):
    sm = tiny_slim("llama", "causal-lm")
    enc = sm.tokenize(["hello world there"])
    want = sm.model.generate(**enc, max_new_tokens=20, do_sample=False)
    for kind, opts in (("sinks", {"sinks": 2, "window": 100}), ("int8", {"group": 8, "residual": 4}),
                       ("h2o", {"heavy": 50, "window": 50})):
        got = sm.model.generate(**enc, max_new_tokens=20, do_sample=False, past_key_values=kv_cache(sm, kind, **opts))
        assert torch.equal(got, want), kind
    small = kv_cache(sm, "sinks", sinks=2, window=6)
    sm.model.generate(**enc, max_new_tokens=20, do_sample=False, past_key_values=small)
    assert small.layers[0].keys.shape[2] == 8                                       # bounded while generating


def test_cache_errors():
    with pytest.raises(ConfigError, match="attention sinks need rotary position embeddings"):
        kv_cache(tiny_slim("gpt2", "causal-lm"), "sinks")
    with pytest.raises(ConfigError, match="KV cache 'int2'; accepted: full, sinks, h2o, int8, int4"):
        kv_cache(tiny_slim("llama", "causal-lm"), "int2")
    with pytest.raises(ConfigError, match="window=0"):
        kv_cache(tiny_slim("llama", "causal-lm"), "sinks", window=0)
    assert cache_bytes(kv_cache(tiny_slim("llama", "causal-lm"), "full")) == 0


def test_cli_evaluate_perplexity_through_a_kv_cache(tmp_path, capsys):
    """`evaluate --task lm --kv-cache KIND`: the text read as one stream; a cache that holds
    everything gives the strided-window perplexity of a window covering the text."""
    import json

    from slimformer import save
    from slimformer.cli import main

    folder = save(tiny_slim("llama", "causal-lm"), tmp_path / "m")
    text = tmp_path / "t.txt"
    text.write_text(" ".join(["the cat sits on the red car", "a dog runs in the city at night"] * 6))
    res = {}
    for kind in ("full", "int8", "sinks"):
        out = tmp_path / f"{kind}.json"
        assert main(["evaluate", str(folder), "--task", "lm", "--data", str(text), "--no-efficiency", "--kv-cache", kind,
                     "--kv-option", "chunk=5", "--kv-option", "window=8", "--out", str(out)]
                    if kind == "sinks" else
                    ["evaluate", str(folder), "--task", "lm", "--data", str(text), "--no-efficiency", "--kv-cache", kind,
                     "--out", str(out)]) in (0, None)
        res[kind] = json.loads(out.read_text())
    plain = tmp_path / "plain.json"
    main(["evaluate", str(folder), "--task", "lm", "--data", str(text), "--no-efficiency", "--ppl-window", "512",
          "--ppl-stride", "512", "--out", str(plain)])
    ppl = json.loads(plain.read_text())["metrics"]["perplexity"]
    assert res["full"]["metrics"]["perplexity"] == pytest.approx(ppl, rel=1e-4)
    assert res["int8"]["metrics"]["perplexity"] == pytest.approx(ppl, rel=0.05)
    s = res["sinks"]["env"]["task_settings"]
    assert s["kv_chunk"] == 5 and s["peak_cache_mb"] < res["full"]["env"]["task_settings"]["peak_cache_mb"]
    assert main(["evaluate", str(folder), "--task", "lm", "--data", str(text), "--kv-cache", "sinks",
                 "--kv-option", "size=3"]) == 2
    assert "accepted keys: sinks, window, heavy" in capsys.readouterr().err
