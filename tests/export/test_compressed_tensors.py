"""compressed-tensors export: plain transformers (with the compressed-tensors package) loads what
we write and computes what our model computes; what the format cannot hold is refused."""
import json

import pytest
import torch

import slimformer as sf
from slimformer.core.errors import ConfigError
from slimformer.core.kernels import use_kernels
from slimformer.export.compressed_tensors import export_compressed_tensors, pack_int32
from slimformer.testing import tiny_slim

ct = pytest.importorskip("compressed_tensors")
REFERENCE = dict(int4_linear="dequant", int8_head="float", int8_linear="float")


def _llama():
    return tiny_slim("llama", "causal-lm", intermediate_size=48)   # widths the groups divide


def _logits(model, ids):
    with torch.no_grad(), use_kernels(**REFERENCE):
        return model(input_ids=ids).logits


@pytest.mark.parametrize("cfg, tol", [
    (sf.WeightOnlyConfig(bits=4, group_size=16, symmetric=True), 1e-5),
    (sf.WeightOnlyConfig(bits=8, group_size=16, symmetric=True), 1e-5),
    (sf.WeightOnlyConfig(bits=4, group_size=16, symmetric=True, algorithm="gptq", calibration_samples=4), 1e-5),
    # W8A8: compressed-tensors scales activations by absmax / 127.5 where we use / 127
    (sf.Int8DynamicConfig(), 0.03),
])
def test_plain_transformers_loads_it_and_matches(tmp_path, cfg, tol):
    from transformers import AutoModelForCausalLM

    sm = _llama()
    sf.quantize_(sm, cfg, ["the cat sits on the mat and looks at the red car"] * 8)
    out = export_compressed_tensors(sm, tmp_path / "ct")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["config_groups"]
    again = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.randint(0, sm.model.config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(0))
    a, b = _logits(sm.model, ids), _logits(again, ids)
    assert ((a - b).norm() / a.norm()) < tol
    assert not any(type(m).__module__.startswith("slimformer") for m in again.modules())
    # the file holds packed codes, not float weights
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    q = "model.layers.0.self_attn.q_proj"
    assert (f"{q}.weight_packed" in keys) or (f"{q}.weight" in keys and isinstance(cfg, sf.Int8DynamicConfig))


def test_asymmetric_codes_decode_with_the_librarys_own_decompressor(tmp_path):
    """Zero points (GPTQ's default) are written as compressed-tensors packs them; its decompressor
    gives back our dequantized weights exactly."""
    from safetensors.torch import load_file
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationScheme

    from slimformer.quantize.modules import GroupQuantLinear

    sm = _llama()
    sf.quantize_(sm, sf.WeightOnlyConfig(bits=4, group_size=16))
    out = export_compressed_tensors(sm, tmp_path / "ct")
    state = load_file(str(out / "model.safetensors"))
    group = json.loads((out / "config.json").read_text())["quantization_config"]["config_groups"]["group_0"]
    assert group["weights"]["symmetric"] is False
    scheme = QuantizationScheme(targets=group["targets"], weights=group["weights"])
    checked = 0
    for name, mod in sm.model.named_modules():
        if isinstance(mod, GroupQuantLinear):
            local = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
            w = PackedQuantizationCompressor.decompress(local, scheme)["weight"]
            torch.testing.assert_close(w.float(), mod.dequantized_weight(), rtol=0, atol=1e-6)
            checked += 1
    assert checked == 14


def test_pack_int32_matches_the_library():
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    g = torch.Generator().manual_seed(0)
    for bits, cols in ((4, 40), (4, 64), (8, 20)):
        codes = torch.randint(0, 2 ** bits, (6, cols), generator=g)
        signed = (codes - 2 ** (bits - 1)).to(torch.int8)
        assert torch.equal(pack_int32(codes, bits), pack_to_int32(signed, bits))


@pytest.mark.parametrize("steps, match", [
    ([sf.WeightOnlyConfig(bits=4, group_size=16, float_zeros=True)], "float zero points"),
    ([sf.WeightOnlyConfig(bits=4, group_size=32)], "whole groups"),
    ([sf.RotateConfig(), sf.WeightOnlyConfig(bits=4, group_size=16)], "rotated"),
    ([sf.Int8StaticConfig()], "static"),
    ([], "nothing in this model is quantized"),
])
def test_what_the_format_cannot_hold_is_refused(tmp_path, steps, match):
    sm = _llama()
    for c in steps:
        sf.quantize_(sm, c, ["the cat sits on the mat"] * 4)
    with pytest.raises(ConfigError, match=match) as e:
        export_compressed_tensors(sm, tmp_path / "ct")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "ct").exists()


def test_conv1d_models_are_refused(tmp_path):
    sm = tiny_slim("gpt2", "causal-lm")
    sf.quantize_(sm, sf.Int8DynamicConfig())
    with pytest.raises(ConfigError, match="Conv1D"):
        export_compressed_tensors(sm, tmp_path / "ct")


def test_cli_export_compressed_tensors(tmp_path, capsys):
    from slimformer.cli import main

    sm = _llama()
    sf.quantize_(sm, sf.WeightOnlyConfig(bits=4, group_size=16, symmetric=True))
    src = sf.save(sm, tmp_path / "q")
    assert main(["export", str(src), "--compressed-tensors", "--out", str(tmp_path / "ct")]) == 0
    assert "compressed-tensors" in capsys.readouterr().out
    assert (tmp_path / "ct" / "model.safetensors").exists()
    fz = _llama()
    sf.quantize_(fz, sf.WeightOnlyConfig(bits=4, group_size=16, float_zeros=True))
    src2 = sf.save(fz, tmp_path / "fz")
    assert main(["export", str(src2), "--compressed-tensors", "--out", str(tmp_path / "ct2")]) == 2
    err = capsys.readouterr().err
    assert "float zero points" in err and err.count("\n") == 1
