"""Streaming a model from its shards, one layer at a time: the same output as the whole-model path,
one layer in memory, clear errors for bad shards and memory limits."""
import dataclasses
import json
import subprocess
import sys

import pytest
import torch

import slimformer as sf
from slimformer.core.errors import ModelLoadError
from slimformer.quantize import quantize_steps
from slimformer.testing.slim import tiny_slim

IDS = torch.tensor([[1, 5, 7, 9, 11, 3, 20, 31]])


def _checkpoint(path, layers=4, tied=False):
    """A tiny Llama in bf16, sharded (as a hub checkpoint is)."""
    sm = tiny_slim("llama", "causal-lm", num_hidden_layers=layers, tie_word_embeddings=tied)
    sm.model.to(torch.bfloat16).save_pretrained(path, max_shard_size="20KB")
    sm.tokenizer.save_pretrained(path)
    assert len(list(path.glob("*.safetensors"))) > 1
    return path


def _compress(src, steps, out, stream):
    model = sf.load(str(src), stream=stream)
    assert (model.stream is not None) == stream
    res = sf.compress(model, {"name": "t", "steps": [s.to_dict() for s in steps]}, None, out,
                      sf.CompressOptions(evaluation=False))
    return model, res


@pytest.mark.parametrize("steps,tied", [
    (quantize_steps("w4"), True),
    (quantize_steps("w4-gptq"), False),
    (quantize_steps("w8"), False),
    ([sf.SparseGPTConfig(amount=0.5)], True),
    ([sf.WandaConfig(amount=0.5)], False),
], ids=["w4", "w4-gptq", "w8", "sparsegpt", "wanda"])
def test_streamed_and_whole_model_give_bit_identical_outputs(tmp_path, steps, tied):
    src = _checkpoint(tmp_path / "src", tied=tied)
    logits = {}
    for stream in (False, True):
        model, res = _compress(src, steps, tmp_path / f"out-{stream}", stream)
        logits[stream] = sf.load(str(tmp_path / f"out-{stream}")).model(IDS).logits
        if stream:
            r = model.stream.reader
            layer = 2 * sum(r.nbytes(k) for k in r.keys() if k.startswith("model.layers.0."))  # bf16 -> float32
            embedding = 2 * r.nbytes("model.embed_tokens.weight")
            # at most one layer and the embedding (both float32) in memory at a time, never the model
            assert model.stream.peak_loaded <= layer + embedding + 1024 < 2 * r.nbytes()
            assert res.steps[0].bytes_after < res.steps[0].bytes_before or steps[0].method != "weight_only"
    assert torch.equal(logits[False], logits[True])


def test_streamed_output_keeps_the_stored_dtype_and_is_sharded(tmp_path):
    from safetensors import safe_open

    src = _checkpoint(tmp_path / "src")
    model = sf.load(str(src), stream=True)
    model.stream.start(tmp_path / "stage", 20_000)  # small shards
    sf.quantize_(model, quantize_steps("w4")[0])
    model.stream.finish()
    sf.save(model, tmp_path / "out")
    files = sorted((tmp_path / "out").glob("slimformer-model-*.safetensors"))
    assert len(files) > 1
    index = json.loads((tmp_path / "out" / "slimformer-model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {f.name for f in files}
    with safe_open(str(files[0]), "pt") as f:
        norms = [k for k in f.keys() if k.endswith("layernorm.weight")]
        assert norms and all(f.get_tensor(k).dtype == torch.bfloat16 for k in norms)
    assert not (tmp_path / "stage").exists() or not list((tmp_path / "stage").glob("*.safetensors"))
    reloaded = sf.load(str(tmp_path / "out"))
    assert torch.isfinite(reloaded.model(IDS).logits).all()


def test_a_recipe_that_needs_the_whole_model_loads_it_whole_and_says_so(tmp_path, capsys):
    src = _checkpoint(tmp_path / "src")
    model = sf.load(str(src), stream=True)
    sf.compress(model, "int4-gptq-rot", None, tmp_path / "out", sf.CompressOptions(evaluation=False, calibration_samples=8))
    err = capsys.readouterr().err
    assert "rotate works on the whole model" in err and "loading the whole model first" in err
    assert model.stream is None and sf.load(str(tmp_path / "out")).model(IDS).logits.isfinite().all()


def test_truncated_or_missing_shard_is_a_one_line_error_naming_it(tmp_path):
    src = _checkpoint(tmp_path / "src")
    shard = sorted(src.glob("model-*.safetensors"))[-1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])
    with pytest.raises(ModelLoadError, match=f"shard .*{shard.name}: truncated"):
        sf.load(str(src), stream=True)
    shard.unlink()
    with pytest.raises(ModelLoadError, match=f"shard {shard.name} named in model.safetensors.index.json is missing"):
        sf.load(str(src), stream=True)
    r = subprocess.run([sys.executable, "-m", "slimformer.cli", "quantize", str(src), "--scheme", "w4", "--out",
                        str(tmp_path / "out")], capture_output=True, text=True)
    assert r.returncode != 0 and shard.name in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_max_memory_below_one_layer_is_refused_before_work_with_the_estimate(tmp_path):
    src = _checkpoint(tmp_path / "src")
    r = subprocess.run([sys.executable, "-m", "slimformer.cli", "quantize", str(src), "--scheme", "w4-gptq", "--out",
                        str(tmp_path / "out"), "--max-memory", "50M"], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert "--max-memory 50 MiB" in line and "needs about" in line and "layer" in line
    assert not (tmp_path / "out").exists()
    r = subprocess.run([sys.executable, "-m", "slimformer.cli", "quantize", str(src), "--scheme", "w4", "--out",
                        str(tmp_path / "out"), "--max-memory", "3G"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "streaming" in r.stderr and sf.load(str(tmp_path / "out")).model(IDS).logits.isfinite().all()


def test_memory_plan_keeps_activations_in_bf16_when_float32_does_not_fit_and_refuses_below_that(tmp_path):
    from slimformer.core.errors import SlimformerError
    from slimformer.models.streaming import estimate_bytes, plan_stream, shard_bytes_for

    sm = sf.load(str(_checkpoint(tmp_path / "src")), stream=True)
    hidden = sm.model.config.hidden_size
    tokens = 64
    samples = int(3e9 // (tokens * hidden * 4))  # planned only: 3 GB of float32 activations for this tiny model
    shard = shard_bytes_for(4 << 30)  # the same for every limit >= 2 GiB
    wide = estimate_bytes(sm, samples, tokens, shard)
    narrow = estimate_bytes(sm, samples, tokens, shard, activation_bytes=2)
    limit = int((wide["total"] + narrow["total"]) / 2)
    assert shard_bytes_for(limit) == shard
    assert wide["activations"] == samples * tokens * hidden * 4 == 2 * narrow["activations"]
    assert narrow["total"] < limit < wide["total"]
    plan = plan_stream(sm, samples, tokens, limit)
    assert plan.activation_dtype == torch.bfloat16 and plan.estimate["total"] == narrow["total"]
    assert any("bfloat16" in n for n in plan.notes)
    assert plan_stream(sm, 4, tokens, limit).activation_dtype is None  # float32 where it fits
    with pytest.raises(SlimformerError, match=r"needs about .* activations .*calibration samples of 64 tokens would fit"):
        plan_stream(sm, samples, tokens, int(narrow["total"] * 0.9))
    with pytest.raises(SlimformerError, match="the process and one layer alone need"):
        plan_stream(sm, samples, tokens, 200 << 20)


def test_gptq_with_bf16_activations_between_layers_stays_close_to_float32(tmp_path):
    # the narrow plan changes only what is kept between layers: the result stays GPTQ's
    src = _checkpoint(tmp_path / "src")
    ref, _ = _compress(src, quantize_steps("w4-gptq"), tmp_path / "f32", stream=True)
    assert ref.stream.activation_dtype is None
    model = sf.load(str(src), stream=True)
    model.stream.activation_dtype = torch.bfloat16
    kept = []
    from slimformer.models import sequential

    real = sequential._layer_out
    sequential._layer_out = lambda layer, args, kwargs: kept.append(sequential._hidden(args, kwargs).dtype) or real(layer, args, kwargs)
    try:
        sf.compress(model, {"name": "t", "steps": [s.to_dict() for s in quantize_steps("w4-gptq")]}, None,
                    tmp_path / "bf16", sf.CompressOptions(evaluation=False))
    finally:
        sequential._layer_out = real
    assert kept and set(kept) == {torch.bfloat16}
    a = sf.load(str(tmp_path / "f32")).model(IDS).logits
    b = sf.load(str(tmp_path / "bf16")).model(IDS).logits
    assert not torch.equal(a, b)
    assert (a - b).abs().max() <= 0.05 * a.abs().max()


def test_layer_by_layer_perplexity_equals_the_whole_model_for_float_and_quantized(tmp_path, shared_data):
    src = _checkpoint(tmp_path / "src", tied=True)
    _compress(src, quantize_steps("w4"), tmp_path / "q", stream=True)
    task = sf.load_task("lm", shared_data / "wikitext2" / "valid.txt")
    opts = sf.EvalOptions(task=sf.TaskOptions(ppl_max_tokens=2000, progress=False), efficiency=False)
    for folder in (src, tmp_path / "q"):
        whole = sf.evaluate(sf.load(str(folder)), task, None, opts)
        streamed_model = sf.load(str(folder), stream=True)
        assert streamed_model.stream is not None
        streamed = sf.evaluate(streamed_model, task, None, opts)
        assert streamed.metrics["perplexity"] == pytest.approx(whole.metrics["perplexity"], rel=1e-6)
        assert streamed.env["task_settings"]["ppl_mode"].startswith("layer by layer")
        assert streamed.efficiency["peak_rss_mb"] > 0 and streamed.efficiency["bytes"] == streamed_model.stream.reader.nbytes()
    r = subprocess.run([sys.executable, "-m", "slimformer.cli", "evaluate", str(tmp_path / "q"), "--task", "lm",
                        "--data", str(shared_data / "wikitext2" / "valid.txt"), "--ppl-max-tokens", "2000", "--stream"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"{whole.metrics['perplexity']:.2f}" in r.stdout and "peak_rss_mb" in r.stdout


def test_layer_by_layer_hessians_keep_only_one_batchs_inputs(tmp_path, monkeypatch):
    """The collector holds each observed input until the end of its batch (so q/k/v share one
    accumulator); across batches it must let them go, or 128 calibration samples of an 8B would
    keep ~27 GB of layer inputs alive."""
    from slimformer.models import sequential

    held, calls = [], []
    real = sequential.run_sequential

    def watched(sm, targets, batches, observe, process_layer, *args, end_of_batch=None, **kw):
        def end():
            held.append(len(observe.seen))
            if end_of_batch is not None:
                end_of_batch()
        calls.append(len(batches))
        return real(sm, targets, batches, observe, process_layer, *args, end_of_batch=end, **kw)

    monkeypatch.setattr(sequential, "run_sequential", watched)
    sm = sf.load(str(_checkpoint(tmp_path / "src", layers=2)))
    cfg = dataclasses.replace(quantize_steps("w4-gptq")[0], calibration_samples=4, calibration_tokens=32)
    sf.compress(sm, {"name": "t", "steps": [cfg.to_dict()]}, None, tmp_path / "out",
                sf.CompressOptions(evaluation=False, calibration_samples=64))
    assert calls == [4] and len(held) == 2 * 4  # 2 layers x 4 batches
    assert max(held) == 4  # one batch's distinct inputs: q/k/v, o, gate/up, down


def test_load_for_perplexity_streams_when_asked_or_when_the_model_does_not_fit(tmp_path, monkeypatch):
    from slimformer.core import hardware
    from slimformer.core.errors import ConfigError
    from slimformer.models.loading import load_for_perplexity
    from slimformer.testing import tiny_slim

    src = _checkpoint(tmp_path / "src")
    assert load_for_perplexity(src, True).stream is not None
    assert load_for_perplexity(src, False).stream is None
    assert load_for_perplexity(src).stream is None  # fits in memory: whole
    told = []
    monkeypatch.setattr(hardware, "available_memory", lambda: 1000)  # bytes: nothing fits
    assert load_for_perplexity(src, notify=told.append).stream is not None and "layer by layer" in told[0]
    sf.save(tiny_slim("bert", "embedding"), tmp_path / "bert")
    with pytest.raises(ConfigError, match="not a decoder LM folder"):
        load_for_perplexity(tmp_path / "bert", True)
