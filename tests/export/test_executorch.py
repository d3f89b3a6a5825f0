"""The ExecuTorch export: tiny encoders and a tiny Llama lowered to XNNPACK, run by ExecuTorch's
own Python runtime and compared with PyTorch; quantized files smaller and close; bad input one
line, nothing written."""
import json

import pytest
import torch
from torch import nn

import slimformer as sf
from slimformer.core.errors import ConfigError, SlimformerError
from slimformer.testing import tiny_slim

pytest.importorskip("executorch")
pytest.importorskip("torchao")
from slimformer.export.executorch import DecomposedLayerNorm, export_executorch, load_executorch  # noqa: E402

TEXTS = ["hello world", "a much longer second sentence with more tokens in it", "short one"]


def _cos(a, b) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten().float(), b.flatten().float(), dim=0).item()


def test_decomposed_layer_norm_is_layer_norm():
    ln = nn.LayerNorm(24, eps=1e-6)
    with torch.no_grad():
        ln.weight.normal_(), ln.bias.normal_()
    x = torch.randn(2, 5, 24) * 3
    assert torch.allclose(DecomposedLayerNorm(ln)(x), ln(x), atol=1e-5)


def test_decomposed_rms_norm_is_the_models_rms_norm():
    from slimformer.export.executorch import DecomposedRMSNorm, _rms_norms

    sm = tiny_slim("llama", "causal-lm")
    norms = _rms_norms(sm.model)
    assert len(norms) == 2 * sm.model.config.num_hidden_layers + 1
    norm, offset = norms[0]
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(2, 5, norm.weight.shape[0]) * 3
    assert torch.allclose(DecomposedRMSNorm(norm, offset)(x), norm(x), atol=1e-5)


@pytest.mark.parametrize("kv_heads, full_mask", [(4, False), (2, True)])
def test_bmm_attention_is_eager_attention(kv_heads, full_mask):
    """The exported encoders' attention (heads folded into the batch) equals transformers' eager
    attention, with a padding mask per row or a full (B, 1, S, S) one, and grouped key/value heads."""
    from transformers.models.llama.modeling_llama import eager_attention_forward

    from slimformer.export.executorch import _bmm_attention

    b, h, s, d = 3, 4, 7, 8
    q, k, v = torch.randn(b, h, s, d), torch.randn(b, kv_heads, s, d), torch.randn(b, kv_heads, s, d)
    keep = torch.ones(b, s, dtype=torch.bool)
    keep[1, 5:] = False
    keep[2, 2:] = False
    bias = torch.where(keep[:, None, None, :], 0.0, torch.finfo(torch.float32).min)
    if full_mask:
        bias = bias.expand(b, 1, s, s).clone()
        bias[0, 0, 3, 6] = torch.finfo(torch.float32).min  # rows differ: not a padding mask
    module = nn.Module()
    module.num_key_value_groups, module.training = h // kv_heads, False
    want, _ = eager_attention_forward(module, q, k, v, bias, scaling=d ** -0.5)
    got, _ = _bmm_attention(module, q, k, v, bias, scaling=d ** -0.5)
    assert got.shape == (b, s, h, d) and torch.allclose(got, want, atol=1e-5)


def test_float_encoder_runs_in_executorch_as_in_pytorch(tmp_path):
    sm = tiny_slim("bert", "embedding")
    path = export_executorch(sm, tmp_path / "enc.pte")
    et = sf.load(path)  # slimformer.load opens a .pte through ExecuTorch's runtime
    assert type(et).__name__ == "ExecuTorchSlimModel" and et.kind == "embedding"
    assert (et.embed(TEXTS) - sm.embed(TEXTS)).abs().max() < 1e-5
    meta = json.loads((tmp_path / "enc.pte.json").read_text())
    assert meta["quantize"] == "none"
    # every layer in one XNNPACK program: nothing between the layers runs on the portable kernels
    assert meta["xnnpack_partitions"] == 1, meta["ops_outside_xnnpack"]
    assert not any("view_copy" in op or "bmm" in op for op in meta["ops_outside_xnnpack"])
    assert "tokenizer.json" in meta["tokenizer_files"] and (tmp_path / "tokenizer.json").exists()
    # a longer input than the example it was exported with: the sequence length is dynamic
    long = [" ".join(["word"] * 40)]
    assert (et.embed(long) - sm.embed(long)).abs().max() < 1e-5


def test_classifier_with_a_fixed_batch_of_four(tmp_path):
    sm = tiny_slim("bert", "classification")
    et = load_executorch(export_executorch(sm, tmp_path / "cls.pte", batch_size=4))
    enc = sm.tokenize(TEXTS * 2)  # 6 rows: one full batch of 4 and one padded
    with torch.no_grad():
        ref = sm.model(**enc).logits
    assert (et.model(**enc).logits - ref).abs().max() < 1e-4


def test_int8_encoder_is_close_and_much_smaller(tmp_path):
    sm = tiny_slim("bert", "embedding")
    f32 = export_executorch(sm, tmp_path / "f.pte")
    i8 = export_executorch(sm, tmp_path / "q.pte", quantize="int8")
    et = load_executorch(i8)
    assert _cos(et.embed(TEXTS), sm.embed(TEXTS)) > 0.98
    assert i8.stat().st_size < 0.6 * f32.stat().st_size  # tiny: the program itself is a third of it
    assert et.meta["quantize"] == "int8" and et.meta["embedding_bits"] == 4


def test_tiny_llama_logits_and_greedy_decoding_through_the_kv_cache(tmp_path):
    sm = tiny_slim("llama", "causal-lm")
    et = sf.load(export_executorch(sm, tmp_path / "lm.pte", max_seq_len=64))
    ids = torch.tensor([[4, 7, 33, 68, 5, 9]])
    with torch.no_grad():
        ref = sm.model(input_ids=ids).logits
        want = sm.model.generate(ids, max_new_tokens=10, do_sample=False)
    assert (et.model(input_ids=ids).logits - ref).abs().max() < 1e-4
    assert torch.equal(et.generate(ids, 10), want)           # one prefill, then one call per token
    assert torch.equal(et.generate(ids, 10), want)           # a second generation starts afresh
    assert et.decode_seconds(ids, 4) > 0
    two = torch.tensor([[4, 7, 33, 68, 5, 9], [0, 0, 12, 40, 41, 3]])           # a left-padded batch of two
    mask = torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1]])
    out = et.model(input_ids=two, attention_mask=mask).logits
    assert out.shape == (2, 6, ref.shape[-1]) and (out[0] - ref[0]).abs().max() < 1e-4
    with torch.no_grad():
        assert (out[1, 2:] - sm.model(input_ids=two[1:, 2:]).logits[0]).abs().max() < 1e-4
    assert et.decode_seconds(two[:, 2:], 3) > 0                              # rows one after another
    with pytest.raises(ValueError, match="KV cache holds 64"):
        et.generate(ids, 60)


def test_int4_llama_is_smaller_and_follows_the_float_model(tmp_path):
    sm = tiny_slim("llama", "causal-lm")
    f32 = export_executorch(sm, tmp_path / "f.pte", max_seq_len=32)
    q4 = export_executorch(sm, tmp_path / "q.pte", quantize="int4", max_seq_len=32)
    ids = torch.tensor([[4, 7, 33, 68, 5, 9]])
    with torch.no_grad():
        ref = sm.model(input_ids=ids).logits
    assert _cos(load_executorch(q4).model(input_ids=ids).logits, ref) > 0.95
    assert q4.stat().st_size < 0.6 * f32.stat().st_size


def test_an_operator_executorch_cannot_take_is_one_line_and_nothing_is_written(tmp_path):
    sm = tiny_slim("bert", "embedding")

    class Odd(nn.Module):  # an op outside ExecuTorch's core opset
        def __init__(self, ln):
            super().__init__()
            self.ln = ln

        def forward(self, x):
            return self.ln(x) + torch.special.bessel_j0(x) * 0

    sm.model.embeddings.LayerNorm = Odd(sm.model.embeddings.LayerNorm)
    out = tmp_path / "new" / "x.pte"
    with pytest.raises(SlimformerError) as e:
        export_executorch(sm, out)
    msg = str(e.value)
    assert "\n" not in msg and "bessel_j0" in msg and "--onnx" in msg
    assert not (tmp_path / "new").exists()


def test_bad_arguments_and_files_it_did_not_write(tmp_path):
    sm = tiny_slim("bert", "embedding")
    with pytest.raises(ConfigError, match="accepted: none, int8, int4"):
        export_executorch(sm, tmp_path / "x.pte", quantize="int2")
    with pytest.raises(ConfigError, match="should end in .pte"):
        export_executorch(sm, tmp_path / "x.onnx")
    theirs = tmp_path / "theirs.pte"
    theirs.write_bytes(b"not ours")
    with pytest.raises(SlimformerError, match="not written by slimformer"):
        export_executorch(sm, theirs)
    assert theirs.read_bytes() == b"not ours"
    q = tiny_slim("bert", "embedding")
    sf.quantize_(q, sf.Int8DynamicConfig())
    with pytest.raises(ConfigError, match="quantized by slimformer"):
        export_executorch(q, tmp_path / "q.pte", quantize="int8")
    with pytest.raises(Exception, match="not a .pte written by slimformer"):
        sf.load(theirs)


def test_cli_export_executorch_then_evaluate(tmp_path, capsys):
    from slimformer.cli import main

    src = sf.save(tiny_slim("bert", "embedding"), tmp_path / "m")
    out = tmp_path / "edge" / "m.pte"
    assert main(["export", str(src), "--executorch", "--quantize", "int8", "--out", str(out)]) == 0
    assert "ExecuTorch, XNNPACK, int8" in capsys.readouterr().out
    names = sorted(p.name for p in out.parent.iterdir())
    assert {"m.pte", "m.pte.json", "m.result.json", "tokenizer.json"} <= set(names)
    result = json.loads((out.parent / "m.result.json").read_text())
    assert [s["method"] for s in result["steps"]] == ["executorch"]
    assert main(["evaluate", str(out)]) == 0
    assert "throughput" in capsys.readouterr().out
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "tokenizer.json").write_text("{}")                                # a user's own tokenizer: left alone
    assert main(["export", str(src), "--executorch", "--out", str(mine / "m.pte")]) != 0
    assert "already holds tokenizer.json" in capsys.readouterr().err and (mine / "tokenizer.json").read_text() == "{}"
    assert main(["export", str(src), "--executorch", "--quantize", "int8-static", "--out", str(out)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "accepted: int8, int4" in err[-1]


def test_a_recipe_ending_in_executorch_writes_a_folder_that_loads(tmp_path):
    sm = tiny_slim("bert", "embedding")
    ref = sm.embed(TEXTS)
    res = sf.compress(sm, [sf.export.ExecuTorchConfig()], None, tmp_path / "out",
                      sf.CompressOptions(evaluate=sf.EvalOptions(efficiency=False)))
    assert res.steps[-1].method == "executorch"
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"model.pte", "model.pte.json", "tokenizer.json", "result.json", "report.html"} <= names
    assert (sf.load(tmp_path / "out" / "model.pte").embed(TEXTS) - ref).abs().max() < 1e-5
