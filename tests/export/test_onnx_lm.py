"""The KV-cache ONNX graph of Llama-family LMs (export_onnx_lm): same logits as PyTorch for float and
quantized models, generate through the cache equals transformers' greedy generate, evaluate runs
on it, and what it cannot hold is refused."""
import pytest
import torch

import slimformer as sf
from slimformer.core.errors import ConfigError
from slimformer.core.kernels import use_kernels
from slimformer.testing import tiny_slim

pytest.importorskip("onnxruntime")
from slimformer.export import export_onnx_lm, load_onnx  # noqa: E402

REFERENCE = dict(int4_linear="dequant", int8_head="float", int8_linear="float")


def tiny_llama(**kw):
    return tiny_slim("llama", "causal-lm", hidden_size=64, head_dim=16, intermediate_size=64, **kw)


@pytest.mark.parametrize("cfg, acc, tol", [
    (None, 4, 1e-5),
    (sf.WeightOnlyConfig(bits=4, group_size=16), 0, 1e-5),
    (sf.WeightOnlyConfig(bits=4, group_size=16, float_zeros=True), 0, 1e-5),
    (sf.WeightOnlyConfig(bits=4, group_size=32), 4, 0.03),          # int8 activations per block
    (sf.WeightOnlyConfig(bits=8, group_size=16), 0, 1e-5),
    (sf.Int8DynamicConfig(), 4, 1e-4),   # per-token int8 activations, as ours (one block per row here)
])
def test_logits_match_and_generate_equals_greedy(tmp_path, cfg, acc, tol):
    sm = tiny_llama()
    if cfg is not None:
        sf.quantize_(sm, cfg)
    lm = load_onnx(export_onnx_lm(sm, tmp_path / "o", accuracy_level=acc))
    ids = torch.randint(5, 99, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), use_kernels(**REFERENCE):
        a = sm.model(input_ids=ids).logits
        ref = sm.model.generate(ids[:1], max_new_tokens=6, min_new_tokens=6, do_sample=False)
    b = lm.model(input_ids=ids).logits
    assert ((a - b).norm() / a.norm()) < tol
    gen = lm.generate(ids[:1], 6)
    if tol <= 1e-4:     # a random tiny model's near-ties may flip under int8 activations
        assert torch.equal(gen, ref)
    assert gen.shape == ref.shape and torch.equal(gen[:, :9], ids[:1])
    ops = {n.op_type for n in __import__("onnx").load(str(tmp_path / "o" / "model.onnx")).graph.node}
    assert "GroupQueryAttention" in ops and (cfg is None or "MatMulNBits" in ops)


def test_incremental_decoding_equals_full_recomputation(tmp_path):
    """Logits of the last token fed one at a time through the cache = those of one full pass."""
    import numpy as np

    sm = tiny_llama()
    sf.quantize_(sm, sf.WeightOnlyConfig(bits=4, group_size=16))
    lm = load_onnx(export_onnx_lm(sm, tmp_path / "o", accuracy_level=0))
    ids = torch.randint(5, 99, (1, 7), generator=torch.Generator().manual_seed(1)).numpy()
    sess = lm.session
    names = [o.name for o in sess.get_outputs()]
    feed = {"input_ids": ids[:, :4], "attention_mask": np.ones((1, 4), np.int64), **lm.model.empty_cache(1)}
    for t in range(4, 7):
        res = dict(zip(names, sess.run(names, feed)))
        feed = {"input_ids": ids[:, t:t + 1], "attention_mask": np.ones((1, t + 1), np.int64),
                **{n.replace("present.", "past_key_values."): v for n, v in res.items() if n.startswith("present.")}}
    last = sess.run(["logits"], feed)[0][:, -1]
    full = lm.model(input_ids=torch.from_numpy(ids)).logits[:, -1].numpy()
    np.testing.assert_allclose(last, full, rtol=1e-4, atol=1e-5)


def test_evaluate_perplexity_on_the_graph(tmp_path):
    from slimformer.data import Task
    from slimformer.evaluate import EvalOptions, TaskOptions

    sm = tiny_llama()
    sf.quantize_(sm, sf.WeightOnlyConfig(bits=4, group_size=16))
    lm = sf.load(export_onnx_lm(sm, tmp_path / "o", accuracy_level=0))
    text = " ".join(["the cat sits on the red car and the dog runs"] * 10)
    opts = EvalOptions(task=TaskOptions(progress=False, ppl_window=16, ppl_stride=8), efficiency=False)
    with use_kernels(**REFERENCE):
        ours = sf.evaluate(sm, Task("lm", [text], "mem"), None, opts).metrics["perplexity"]
    theirs = sf.evaluate(lm, Task("lm", [text], "mem"), None, opts).metrics["perplexity"]
    assert theirs == pytest.approx(ours, rel=1e-4)
    # generation speed is measured on the graph too, through its own cache loop
    import dataclasses

    from slimformer.evaluate import TimingOptions

    timing = TimingOptions(seq_len=16, batch_size=2, warmup=1, repeats=2, throughput_repeats=1, decode_tokens=3,
                           generation_repeats=1, prefill_len=32)
    eff = sf.evaluate(lm, None, None, dataclasses.replace(opts, efficiency=True, timing=timing)).efficiency
    assert eff["decode_tokens_per_s"] > 0 and eff["decode_tokens_per_s_batch8"] > 0 and eff["prefill_tokens_per_s"] > 0


def test_refusals_are_one_line(tmp_path):
    rot = tiny_llama()
    sf.quantize_(rot, sf.RotateConfig())
    sf.quantize_(rot, sf.WeightOnlyConfig(bits=4, group_size=16))
    for sm, match in ((rot, "rotated"), (tiny_slim("gpt2", "causal-lm"), "Llama / Qwen2"),
                      (tiny_slim("llama", "causal-lm"), "head size")):
        with pytest.raises(ConfigError, match=match) as e:
            export_onnx_lm(sm, tmp_path / "o")
        assert "\n" not in str(e.value) and not (tmp_path / "o").exists()


def test_cli_export_onnx_of_a_quantized_lm_folder(tmp_path, capsys):
    from slimformer.cli import main

    sm = tiny_llama()
    sf.quantize_(sm, sf.WeightOnlyConfig(bits=4, group_size=16))
    src = sf.save(sm, tmp_path / "q")
    assert main(["export", str(src), "--onnx", "--out", str(tmp_path / "o"), "--accuracy-level", "0"]) == 0
    assert "KV-cache" in capsys.readouterr().out
    lm = sf.load(tmp_path / "o")
    assert lm.meta["kv_cache"]["layers"] == 2 and lm.generate(torch.tensor([[5, 6, 7]]), 3).shape == (1, 6)


@pytest.mark.parametrize("float_zero", [False, True])
@pytest.mark.parametrize("k, block", [(96, 32), (96, 64)])          # (96, 64): a short last group, padded
def test_matmulnbits_carries_our_codes_exactly(k, block, float_zero):
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto as TP
    from onnx import helper

    from slimformer.export.onnx_lm import _Graph, _nbits

    rng = np.random.default_rng(0)
    n, nb = 32, -(-k // block)
    codes = rng.integers(0, 16, (n, k)).astype(np.uint8)
    scales = (rng.random((n, nb)) + 0.1).astype(np.float32)
    zeros = (rng.random((n, nb)) * 15).astype(np.float32) if float_zero else rng.integers(0, 16, (n, nb)).astype(np.uint8)
    g = _Graph()
    y = _nbits(g, "x", codes, scales, zeros, 4, block, 0, None)
    g.nodes.append(helper.make_node("Identity", [y], ["y"]))
    graph = helper.make_graph(g.nodes, "t", [helper.make_tensor_value_info("x", TP.FLOAT, ["b", "s", k])],
                              [helper.make_tensor_value_info("y", TP.FLOAT, ["b", "s", n])], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((2, 3, k)).astype(np.float32)
    gidx = np.arange(k) // block
    w = (codes.astype(np.float64) - zeros.astype(np.float64)[:, gidx]) * scales.astype(np.float64)[:, gidx]
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], x @ w.T, rtol=1e-4, atol=1e-4)
    ops = [nd.op_type for nd in model.graph.node]
    assert ("MatMul" in ops) == float_zero          # float zero points: symmetric MatMulNBits + correction


def test_onnxruntime_genai_generates_with_the_folder_as_ours(tmp_path):
    """genai_config.json lets onnxruntime-genai run the exported folder: its greedy tokens equal ours."""
    og = pytest.importorskip("onnxruntime_genai")
    sm = tiny_llama()
    sf.quantize_(sm, sf.WeightOnlyConfig(bits=4, group_size=16))
    folder = export_onnx_lm(sm, tmp_path / "o", accuracy_level=0)
    ids = [4, 17, 33, 8, 61, 20]
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + 8, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(ids)
    while not gen.is_done():
        gen.generate_next_token()
    theirs = [int(t) for t in gen.get_sequence(0)]
    ours = load_onnx(folder).generate(torch.tensor([ids]), 8)[0].tolist()
    assert theirs == ours and len(theirs) == len(ids) + 8
