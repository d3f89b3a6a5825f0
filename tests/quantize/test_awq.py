"""AWQ scaling: exact in float, searched per group, better int4 where activations have outliers."""
import pytest
import torch

import slimformer as sf
from slimformer.quantize import SCHEMES
from slimformer.quantize.awq import scale_groups, search_scale
from slimformer.core import step_details
from slimformer.quantize.handlers import linear_targets
from slimformer.quantize.modules import GroupQuantLinear
from slimformer.core.qmath import dequantize_groupwise, quantize_groupwise, sqnr
from slimformer.testing import tiny_output, tiny_slim

TEXTS = sf.sample_sentences()[:48]


_out = tiny_output


def _rtn(w, bits=4, gs=16):
    return dequantize_groupwise(*quantize_groupwise(w, bits, gs), group_size=gs)


# family, kind, foldable groups: llama norm->qkv, v->o (GQA), norm->gate/up, up->down per layer;
# gpt2 ln_1->c_attn, ln_2->c_fc (plain FFN, fused qkv); bert (post-LN) only v->o;
# t5 (pre-LN, relu FFN): encoder attn norm, v->o, ffn norm; decoder also cross-attention q
@pytest.mark.parametrize("family,kind,n_groups", [("llama", "causal-lm", 8), ("gpt2", "causal-lm", 4),
                                                   ("bert", "embedding", 2), ("t5", "seq2seq-lm", 14)])
def test_awq_scaling_is_exact_in_float(family, kind, n_groups):
    sm = tiny_slim(family, kind)
    ref = _out(sm)
    cfg = sf.AwqConfig(bits=4, group_size=16, calibration_tokens=32)
    names = {n for n, _ in linear_targets(sm, cfg, include_head=False)}
    assert len(scale_groups(sm, names)) == n_groups
    before = {n: p.detach().clone() for n, p in sm.model.named_parameters()}
    warnings = sf.quantize_(sm, cfg, TEXTS)
    meta = step_details(sm, "awq")
    assert meta["groups"] == n_groups and any(f"{n_groups} layer groups scaled" in w for w in warnings)
    assert all(0.0 <= a <= 1.0 for a in meta["alpha"].values())
    # some weights really moved (alpha > 0 somewhere), and the model computes the same function
    moved = [n for n, p in sm.model.named_parameters() if not torch.equal(p, before[n])]
    assert moved if any(a > 0 for a in meta["alpha"].values()) else not moved
    torch.testing.assert_close(_out(sm), ref, rtol=1e-4, atol=1e-4)


def test_search_picks_a_scale_that_protects_outlier_channels():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 64, generator=g)
    x[:, :4] *= 25.0  # four outlier input channels
    w = torch.randn(48, 64, generator=g)
    H = x.T @ x / len(x)
    alpha, s, errs = search_scale([w], [_rtn], H, x.abs().mean(0))
    assert len(errs) == 21 and alpha > 0
    assert min(errs) == errs[round(alpha * 20)] < 0.8 * errs[0]  # alpha 0 = plain RTN
    assert s[:4].min() > s[4:].max()  # outlier channels get the largest scales
    # the error the search reports is the real output error of the scaled, quantized layer
    d = w - _rtn(w * s) / s
    assert abs(((x @ d.T) ** 2).sum(1).mean().item() - min(errs)) < 1e-3 * min(errs)


def _outlier_llama():
    """Activation outliers in every layer's attention and FFN inputs, with the same float
    function: norm channel weights x50, the matching weight columns / 50."""
    sm = tiny_slim("llama", "causal-lm", hidden_size=64, intermediate_size=64)
    with torch.no_grad():
        for layer in sm.model.model.layers:
            for norm, mods in ((layer.input_layernorm, [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj]),
                               (layer.post_attention_layernorm, [layer.mlp.gate_proj, layer.mlp.up_proj])):
                norm.weight[:3] *= 50.0
                for m in mods:
                    m.weight[:, :3] /= 50.0
    return sm


def test_awq_beats_plain_rtn_with_activation_outliers(tmp_path):
    ref = _out(_outlier_llama())
    plain, awq = _outlier_llama(), _outlier_llama()
    sf.quantize_(plain, sf.WeightOnlyConfig(bits=4, group_size=16, embeddings=False, lm_head=False))
    sf.quantize_(awq, sf.AwqConfig(bits=4, group_size=16, calibration_tokens=32), TEXTS)
    sf.quantize_(awq, sf.WeightOnlyConfig(bits=4, group_size=16, embeddings=False, lm_head=False), TEXTS)
    # 17.9 vs 16.4 dB (the v -> o groups, whose inputs have no planted outliers, give back ~2.5 dB
    # of the norm groups' gain on this random model; on SmolLM2 they help)
    assert sqnr(ref, _out(awq)) > sqnr(ref, _out(plain)) + 1.0
    assert isinstance(awq.model.model.layers[0].self_attn.q_proj, GroupQuantLinear)
    again = sf.load(sf.save(awq, tmp_path / "m"))  # the scaled norms are saved with the model
    assert torch.equal(_out(again), _out(awq))


def test_awq_with_gptq_and_mixed_precision_reload(tmp_path):
    sm = _outlier_llama()
    ref = _out(sm)
    cfg = sf.MixedPrecisionConfig(scheme="w4-awq", fallback="int4-g32", max_drop=0.0, max_float=1, calibration_texts=16)
    w = sf.quantize_(sm, cfg, TEXTS)
    mp = step_details(sm, "mixed_precision")
    assert mp["awq"]["groups"] == 8 and len(mp["kept_int4_g32"]) == 1
    assert any("layer groups scaled" in x for x in w)
    assert sqnr(ref, _out(sm)) > 10
    again = sf.load(sf.save(sm, tmp_path / "m"))
    assert torch.equal(_out(again), _out(sm))
    g = _outlier_llama()
    sf.quantize_(g, sf.AwqConfig(bits=4, group_size=16, calibration_tokens=32), TEXTS)
    sf.quantize_(g, sf.WeightOnlyConfig(bits=4, group_size=16, algorithm="gptq", calibration_tokens=32), TEXTS)
    assert step_details(g, "awq")["groups"] == 8 and sqnr(ref, _out(g)) > 10


def test_awq_skips_norms_that_do_not_take_a_scale():
    # Gemma's RMSNorm computes x * (1 + weight): dividing weight by s does not divide the output
    sm = tiny_slim("gemma3", "causal-lm")
    ref = _out(sm)
    cfg = sf.AwqConfig(bits=4, group_size=16, calibration_tokens=32)
    w = sf.quantize_(sm, cfg, TEXTS)
    assert any("cannot take a per-channel scale exactly (Gemma3RMSNorm)" in x for x in w)
    assert step_details(sm, "awq")["groups"] == 4  # v -> o and up -> down in each layer still scaled
    torch.testing.assert_close(_out(sm), ref, rtol=1e-4, atol=1e-4)


def test_awq_needs_calibration_data():
    with pytest.raises(sf.SlimformerError, match="awq searches activation-aware scales on calibration data"):
        sf.quantize_(tiny_slim("llama", "causal-lm"), sf.AwqConfig())


def test_w4_awq_scheme():
    awq, wo = SCHEMES["w4-awq"]
    assert awq.method == "awq" and (awq.bits, awq.group_size) == (4, 128)
    assert wo.bits == 4 and wo.group_size == 128 and wo.algorithm == "rtn"


def test_layer_by_layer_search_matches_one_pass_of_the_float_model(monkeypatch):
    # the sequential path reuses each layer's observation pass as the next layer's input (the
    # scaling is exact); it must find the same scales as observing the float model in one pass
    import slimformer.quantize.awq as awq

    cfg = sf.AwqConfig(bits=4, group_size=16, calibration_tokens=32)
    seq = _outlier_llama()
    sf.quantize_(seq, cfg, TEXTS)
    monkeypatch.setattr(awq, "sequential_supported", lambda sm: False)
    one = _outlier_llama()
    sf.quantize_(one, cfg, TEXTS)
    assert step_details(seq, "awq") == step_details(one, "awq") and any(a > 0 for a in step_details(one, "awq")["alpha"].values())
    for (n, p), (_, q) in zip(seq.model.named_parameters(), one.model.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_v_to_o_fold_is_exact_for_any_scale(family):
    # GQA (llama: 4 query heads on 2 kv heads): one value channel's scale must reach the o
    # columns of every query head that reads it; a random scale, not a searched one
    from slimformer.quantize.awq import _apply

    sm = tiny_slim(family, "causal-lm" if family == "llama" else "embedding")
    ref = _out(sm)
    names = {n for n, _ in linear_targets(sm, sf.WeightOnlyConfig(), include_head=False)}
    vo = [g for g in scale_groups(sm, names) if g.linears[0].endswith(("o_proj", "output.dense"))]
    assert len(vo) == 2 and ((vo[0].kv_repeat == (2, 8)) if family == "llama" else vo[0].kv_repeat is None)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for grp in vo:
            width = grp.prev.weight.shape[0]  # value projection outputs
            _apply(sm, grp, torch.rand(width, generator=g) * 4 + 0.25)
    torch.testing.assert_close(_out(sm), ref, rtol=1e-4, atol=1e-4)
