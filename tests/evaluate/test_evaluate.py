import json

import pytest

from slimformer import EvalOptions, EvalResult, TimingOptions, evaluate
from slimformer.core.errors import SlimformerError
from slimformer.data import Task
from slimformer.evaluate import TaskOptions, recovery
from slimformer.testing import tiny_slim

FAST = EvalOptions(timing=TimingOptions(seq_len=16, batch_size=4, warmup=1, repeats=3, throughput_repeats=2),
                   task=TaskOptions(progress=False, ppl_window=16, ppl_stride=8, gen_max_new_tokens=4))

STS = Task("stsb", [("the cat sits", "a cat sits", 4.5), ("the dog runs", "the sky is blue", 0.5),
                    ("a man reads a book", "a man reads", 3.0), ("red car", "the sun", 0.0)], "mem")


def test_eval_result_shape_and_json_round_trip():
    r = evaluate(tiny_slim(), STS, None, FAST)
    d = r.to_dict()
    assert set(d) == {"metrics", "efficiency", "fidelity", "env"}
    assert -100 <= d["metrics"]["spearman"] <= 100
    for k in ("params", "bytes", "latency_ms_p50", "latency_ms_p95", "throughput", "peak_memory_mb"):
        assert d["efficiency"][k] > 0, k
    assert d["efficiency"]["latency_ms_p95"] >= d["efficiency"]["latency_ms_p50"]
    assert d["env"]["timing"]["seq_len"] == 16 and d["env"]["timing"]["latency_batch"] == 1
    assert EvalResult.from_json(r.to_json()) == r
    assert all(k == k.lower() for k in d["metrics"]) and all(k == k.lower() for k in d["efficiency"])


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_causal_lm_generation_speed(family):
    """Prefill and decode tokens/s for causal LMs (batch 1 and 8), not for encoders; the prefill
    length is capped by the model's positions (tiny models have 128)."""
    import dataclasses

    from slimformer.evaluate.efficiency import decode_seconds, generation_speed

    lm = tiny_slim(family, "causal-lm")
    timing = dataclasses.replace(FAST.timing, decode_tokens=4, generation_repeats=1)
    r = evaluate(lm, None, None, EvalOptions(timing=timing))
    for k in ("prefill_tokens_per_s", "decode_tokens_per_s", "decode_tokens_per_s_batch8"):
        assert r.efficiency[k] > 0, k
    assert r.env["timing"]["decode_tokens"] == 4 and r.env["timing"]["decode_batches"] == [1, 8]
    assert "decode_tokens_per_s" not in evaluate(tiny_slim(), None, None, FAST).efficiency
    # the decode loop really runs `steps` forwards through the cache, one new token each
    calls = []
    hook = lm.model.register_forward_hook(lambda m, a, kw, out: calls.append(kw["input_ids"].shape), with_kwargs=True)
    import torch

    decode_seconds(lm, torch.tensor([[5, 6, 7]]), 3)
    hook.remove()
    assert calls == [(1, 3), (1, 1), (1, 1), (1, 1)]
    # ...and the cache it passes is really used: greedy tokens equal transformers' generate
    ids = torch.tensor([[5, 6, 7]])
    ref = lm.model.generate(ids, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    seen = []
    hook = lm.model.register_forward_hook(lambda m, a, kw, out: seen.append(out.logits[:, -1].argmax(-1)),
                                          with_kwargs=True)
    decode_seconds(lm, ids, 3)
    hook.remove()
    assert torch.equal(torch.stack(seen[:3], 1), ref[:, 3:])
    assert generation_speed(lm, ["the cat sits on the mat"], dataclasses.replace(timing, prefill_len=4096))


def test_bytes_are_saved_size():
    sm = tiny_slim()
    r = evaluate(sm, None, None, FAST)
    nbytes = sum(p.numel() * 4 for p in sm.model.state_dict().values())
    assert nbytes <= r.efficiency["bytes"] < nbytes + 64 * 1024  # safetensors header only
    assert r.efficiency["params"] == sum(p.numel() for p in sm.model.parameters())


def test_fidelity_to_itself_is_perfect_and_to_other_is_not():
    sm = tiny_slim()
    r = evaluate(sm, STS, tiny_slim(), FAST)
    assert r.fidelity["cosine"] == pytest.approx(1.0, abs=1e-6)
    r2 = evaluate(sm, None, tiny_slim(seed=3), EvalOptions(efficiency=False))
    assert r2.fidelity["cosine"] < 0.999
    lm = tiny_slim("llama", "causal-lm")
    r3 = evaluate(lm, None, tiny_slim("llama", "causal-lm"), EvalOptions(efficiency=False))
    assert r3.fidelity["kl"] == pytest.approx(0.0, abs=1e-6) and r3.fidelity["agreement"] == 1.0


def test_perplexity_records_window_and_stride():
    lm = tiny_slim("llama", "causal-lm")
    text = " ".join(["the cat sits on the red car and the dog runs"] * 10)
    r = evaluate(lm, Task("lm", [text], "mem"), None, EvalOptions(task=FAST.task, efficiency=False))
    # a random tiny model: perplexity near the vocabulary size, far from 1
    assert 10 < r.metrics["perplexity"] < 1000
    s = r.env["task_settings"]
    assert s["ppl_window"] == 16 and s["ppl_stride"] == 8 and s["ppl_scored"] == s["ppl_tokens"] - 1
    assert r.env["kernels"] == {}                     # a float model runs no quantized kernel
    assert r.env["runtime"] == "pytorch"
    import slimformer as sf
    from slimformer.core.kernels import kernel

    sf.quantize_(lm, sf.Int8DynamicConfig())
    r = evaluate(lm, Task("lm", [text], "mem"), None, EvalOptions(task=FAST.task, efficiency=False))
    assert r.env["kernels"]["int8_linear"] == kernel("int8_linear")   # the choice it ran with, recorded


def test_classification_and_seq2seq_tasks():
    clf = tiny_slim("bert", "classification")
    t = Task("classification", [("the cat", 0), ("a dog", 1), ("good film", 1), ("bad film", 0)], "mem")
    r = evaluate(clf, t, None, EvalOptions(task=FAST.task, efficiency=False))
    assert 0 <= r.metrics["accuracy"] <= 100 and "f1" in r.metrics
    s2s = tiny_slim("t5", "seq2seq-lm")
    t = Task("translation", [("the cat sits", "the cat sits"), ("a dog runs", "a dog runs")], "mem")
    r = evaluate(s2s, t, None, EvalOptions(task=FAST.task, efficiency=False))
    assert 0 <= r.metrics["bleu"] <= 100 and 0 <= r.metrics["chrf"] <= 100
    assert r.metrics["bleu_lowercase"] >= r.metrics["bleu"] - 1e-9
    # the reference Transformer translates through the same runner (its own beam search)
    ref = tiny_slim("slim-transformer", "seq2seq-lm")
    r2 = evaluate(ref, t, None, EvalOptions(task=FAST.task, efficiency=False))
    assert 0 <= r2.metrics["bleu"] <= 100
    # summarization: ROUGE on a seq2seq model's generated summaries
    t = Task("summarization", [("the cat sits on the red car all day", "cat on car"),
                               ("a dog runs in the city at night", "dog runs")], "mem")
    r3 = evaluate(s2s, t, None, EvalOptions(task=FAST.task, efficiency=False))
    assert {"rouge1", "rouge2", "rougeL"} <= set(r3.metrics)
    assert all(0 <= r3.metrics[k] <= 100 for k in ("rouge1", "rouge2", "rougeL"))
    assert r3.env["task_settings"]["n"] == 2


def test_task_the_model_cannot_do():
    with pytest.raises(SlimformerError, match="needs a model of kind causal-lm"):
        evaluate(tiny_slim(), Task("lm", ["the cat"], "mem"), None, FAST)


def test_recovery_direction():
    b = EvalResult(metrics={"spearman": 80.0, "perplexity": 20.0})
    c = EvalResult(metrics={"spearman": 76.0, "perplexity": 25.0})
    rec = recovery(b, c)
    assert rec["spearman"] == pytest.approx(0.95) and rec["perplexity"] == pytest.approx(0.8)
