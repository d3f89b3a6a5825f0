"""The factorization family: the math's identities, the ratio met, shared weights stored once and
shared after a load, composition with quantization and ONNX, and one-line refusals."""
import pytest
import torch

import slimformer as sf
from slimformer.core.errors import ConfigError, DataError
from slimformer.factorize import lowrank_math as lm
from slimformer.factorize.modules import LowRankLinear
from slimformer.testing import tiny_output, tiny_slim

TEXTS = sf.sample_sentences()[:48]


def _layer(out_f=48, in_f=32, n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g, dtype=torch.float64)
    mix = torch.randn(in_f, in_f, generator=g, dtype=torch.float64)  # correlated, unequal channels
    x = mix @ torch.randn(in_f, n, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3, in_f)[:, None]
    return w, x


def test_svd_llm_loss_equals_the_truncated_whitened_singular_values():
    w, x = _layer()
    S = lm.whitening(x @ x.T, damp=0.0)
    for r in (4, 12, 24):
        f = lm.factorize(w, r, S=S)
        loss = (w @ x - f.a @ f.b @ x).pow(2).sum().item()
        s = torch.linalg.svdvals(w @ S)
        assert loss == pytest.approx(s[r:].pow(2).sum().item(), rel=1e-8)
        assert f.dropped == pytest.approx(loss, rel=1e-8)


def test_whitening_beats_plain_and_activation_aware_svd_on_the_output_loss():
    w, x = _layer(seed=1)
    S = lm.whitening(x @ x.T, damp=0.0)
    r = 10
    loss = {}
    for name, kw in {"svd": {}, "asvd": {"col": lm.activation_scale(x.abs().mean(1))}, "svd_llm": {"S": S}}.items():
        f = lm.factorize(w, r, **kw)
        loss[name] = (w @ x - f.a @ f.b @ x).pow(2).sum().item()
    assert loss["svd_llm"] < loss["asvd"] < loss["svd"]


def test_row_weights_protect_the_rows_they_weigh():
    w, _ = _layer(seed=2)
    row = torch.ones(w.shape[0], dtype=torch.float64)
    row[:4] = 30.0
    plain, weighted = lm.factorize(w, 6), lm.factorize(w, 6, row=row)
    err = lambda f: (w - f.a @ f.b)[:4].pow(2).sum().item()  # noqa: E731
    assert err(weighted) < 0.2 * err(plain)


def test_basis_sharing_reconstructs_each_layer_from_one_basis():
    g = torch.Generator().manual_seed(3)
    basis = torch.randn(8, 32, generator=g, dtype=torch.float64)
    ws = [torch.randn(24, 8, generator=g, dtype=torch.float64) @ basis for _ in range(3)]  # rank 8, one row space
    b, coeffs, dropped, energy = lm.shared_basis(ws, 8)
    assert b.shape == (8, 32) and [a.shape for a in coeffs] == [(24, 8)] * 3
    for w, a in zip(ws, coeffs):
        assert torch.allclose(a @ b, w, atol=1e-9)
    assert dropped < 1e-12 * energy


@pytest.mark.parametrize("alloc", ["uniform", "spectrum"])
def test_the_ratio_is_met(alloc):
    sm = tiny_slim("llama", "causal-lm", intermediate_size=96)
    sf.factorize_(sm, sf.SvdLlmConfig(ratio=0.6, allocation=alloc, calibration_tokens=32), data=TEXTS)
    d = sm.meta["steps"][-1]["details"]
    assert 0.5 < d["kept"] <= 0.6
    mods = [m for m in sm.model.modules() if isinstance(m, LowRankLinear)]
    kept = sum(m.rank * (m.in_features + m.out_features) for m in mods)
    full = sum(m.in_features * m.out_features for m in mods)
    assert kept / full == pytest.approx(d["kept"], abs=1e-3)
    if alloc == "spectrum":  # not every layer gets the same rank
        assert len({(m.rank, m.in_features, m.out_features) for m in mods}) > len(
            {(m.in_features, m.out_features) for m in mods})


def test_shared_layers_are_stored_once_and_stay_shared_after_a_load(tmp_path):
    from safetensors.torch import load_file

    base = tiny_slim("bert", "embedding")
    dense_bytes = sum(t.numel() * t.element_size() for t in base.model.state_dict().values())
    sm = tiny_slim("bert", "embedding")
    sf.factorize_(sm, sf.ShareLayersConfig(group=2))
    layer = lambda m, i: m.model.encoder.layer[i]  # noqa: E731
    assert layer(sm, 1).attention.self.query is layer(sm, 0).attention.self.query
    assert layer(sm, 1).attention.output.LayerNorm is not layer(sm, 0).attention.output.LayerNorm  # norms own
    out = sf.save(sm, tmp_path / "shared")
    saved = {k: v for f in out.glob("*.safetensors") for k, v in load_file(str(f)).items()}
    saved_bytes = sum(t.numel() * t.element_size() for t in saved.values())
    assert not any(k.startswith("encoder.layer.1.attention.self.query") for k in saved)
    assert saved_bytes < 0.8 * dense_bytes
    again = sf.load(out)
    assert layer(again, 1).attention.self.query is layer(again, 0).attention.self.query
    assert torch.equal(tiny_output(again), tiny_output(sm))


def test_basis_sharing_shares_the_first_factor_after_a_load(tmp_path):
    sm = tiny_slim("llama", "causal-lm", intermediate_size=96)
    sf.factorize_(sm, sf.BasisSharingConfig(ratio=0.7, calibration_tokens=32), data=TEXTS)
    q0, q1 = (sm.model.model.layers[i].self_attn.q_proj for i in (0, 1))
    assert isinstance(q0, LowRankLinear) and q0.first is q1.first and q0.second is not q1.second
    o0, o1 = (sm.model.model.layers[i].self_attn.o_proj for i in (0, 1))
    assert o0.first is not o1.first  # o is factorized one layer at a time by default
    again = sf.load(sf.save(sm, tmp_path / "bs"))
    a0, a1 = (again.model.model.layers[i].self_attn.q_proj for i in (0, 1))
    assert a0.first is a1.first
    assert torch.equal(tiny_output(again), tiny_output(sm))


def test_a_quantizer_after_sharing_keeps_the_layers_shared(tmp_path):
    sm = tiny_slim("bert", "embedding")
    sf.factorize_(sm, sf.ShareLayersConfig())
    sf.quantize_(sm, sf.Int8DynamicConfig())
    l0, l1 = sm.model.encoder.layer[0], sm.model.encoder.layer[1]
    assert l1.attention.self.query is l0.attention.self.query
    again = sf.load(sf.save(sm, tmp_path / "q"))
    assert torch.equal(tiny_output(again), tiny_output(sm))


@pytest.mark.parametrize("quant", [sf.Int8DynamicConfig(), sf.WeightOnlyConfig(bits=4, group_size=16)])
def test_factorized_then_quantized_round_trips(quant, tmp_path):
    sm = tiny_slim("llama", "causal-lm", intermediate_size=96)
    sf.factorize_(sm, sf.SvdLlmConfig(ratio=0.8, calibration_tokens=32), data=TEXTS)
    before = tiny_output(sm)
    sf.quantize_(sm, quant)
    q = sm.model.model.layers[0].mlp.up_proj
    assert type(q.first).__name__ != "Linear" and type(q.second).__name__ != "Linear"  # both factors quantized
    out = tiny_output(sm)
    assert torch.nn.functional.cosine_similarity(out.flatten(), before.flatten(), dim=0) > 0.98
    again = sf.load(sf.save(sm, tmp_path / "fq"))
    assert torch.equal(tiny_output(again), out)


def test_factorized_encoder_exports_to_onnx(tmp_path):
    pytest.importorskip("onnxruntime")
    sm = tiny_slim("bert", "embedding")
    sf.factorize_(sm, sf.SvdConfig(ratio=0.7))
    sf.factorize_(sm, sf.EmbeddingFactorConfig(rank=16))
    from slimformer.export import export_onnx

    a = sm.embed(TEXTS[:8])
    art = sf.load(export_onnx(sm, tmp_path / "onnx"))
    assert torch.nn.functional.cosine_similarity(a, art.embed(TEXTS[:8])).min() > 0.9999
    q = sf.load(export_onnx(sm, tmp_path / "onnx-int8", quantize="int8"))
    assert torch.nn.functional.cosine_similarity(a, q.embed(TEXTS[:8])).min() > 0.95


def test_bad_inputs_are_one_line_errors():
    for bad in (0.0, 1.5, -0.2, "x"):
        with pytest.raises(ConfigError, match="ratio"):
            sf.SvdConfig(ratio=bad)
    with pytest.raises(ConfigError, match="allocation"):
        sf.SvdConfig(allocation="greedy")
    sm = tiny_slim("bert", "embedding")  # hidden 32: 32 x 32 breaks even at rank 15
    with pytest.raises(ConfigError, match=r"rank 40 is larger.*accepted: 1\.\.32"):
        sf.factorize_(sm, sf.SvdConfig(rank=40))
    with pytest.raises(ConfigError, match=r"rank 20 saves nothing.*accepted: 1\.\.15"):
        sf.factorize_(sm, sf.SvdConfig(rank=20))
    with pytest.raises(DataError, match="calibration data"):
        sf.factorize_(sm, sf.SvdLlmConfig())
    from slimformer.models.surgery import remove_ffn_neurons_

    pruned = tiny_slim("bert", "embedding")
    remove_ffn_neurons_(pruned.model, {0: range(10)})  # layer 0 keeps 10 FFN neurons, layer 1 all
    with pytest.raises(ConfigError, match="different shapes"):
        sf.factorize_(pruned, sf.ShareLayersConfig())
    with pytest.raises(ConfigError, match="different shapes"):
        sf.factorize_(pruned, sf.BasisSharingConfig(), data=TEXTS)
    lm_tied = tiny_slim("llama", "causal-lm", tie_word_embeddings=True)
    with pytest.raises(ConfigError, match="ties its token embedding"):
        sf.factorize_(lm_tied, sf.EmbeddingFactorConfig(rank=8))
    with pytest.raises(ConfigError, match="no two adjacent layers"):
        sf.factorize_(tiny_slim("bert", "embedding", num_hidden_layers=1), sf.ShareLayersConfig())


def test_parts_ffn_factorizes_only_the_ffn():
    sm = tiny_slim("bert", "embedding")
    sf.factorize_(sm, sf.SvdConfig(ratio=0.5, parts="ffn"))
    layer = sm.model.encoder.layer[0]
    assert isinstance(layer.intermediate.dense, LowRankLinear) and isinstance(layer.output.dense, LowRankLinear)
    assert isinstance(layer.attention.self.query, torch.nn.Linear)


@pytest.mark.parametrize("recipe,family,kind", [("lowrank-svdllm", "llama", "causal-lm"),
                                                ("encoder-lowrank", "bert", "embedding"),
                                                ("share-layers", "bert", "embedding")])
def test_builtin_factorize_recipes_run(recipe, family, kind, tmp_path):
    import dataclasses

    from slimformer.recipes import CompressOptions, load_recipe

    r = load_recipe(recipe)
    short = {"distill": dict(max_steps=2, epochs=1.0, batch_size=8, mixed_precision="no"),
             "deploy": dict(candidates=("onnx-int8",)),
             "factorize_embedding": dict(rank=8)}
    steps = [dataclasses.replace(c, **short.get(c.method, {}), **(
        {"calibration_tokens": 32} if hasattr(c, "calibration_tokens") else {})) for c in r.steps]
    sm = tiny_slim(family, kind, **({"intermediate_size": 96} if family == "llama" else {}))
    n0 = sm.num_params()
    res = sf.compress(sm, dataclasses.replace(r, steps=steps), None, tmp_path / "out",
                      CompressOptions(unlabeled=TEXTS, calibration_samples=16))
    assert [s.method for s in res.steps] == [c.method for c in r.steps]
    assert res.steps[-1].params_after < n0 or res.steps[-1].bytes_after < res.steps[0].bytes_before
    out = sf.load(tmp_path / "out")
    assert out is not None


def test_factorized_lm_exports_to_the_onnx_kv_cache_graph(tmp_path):
    pytest.importorskip("onnxruntime")
    from slimformer.core.run import Run
    from slimformer.recipes import load_recipe, run_steps

    sm = tiny_slim("llama", "causal-lm", intermediate_size=64, hidden_size=64, head_dim=16)
    sf.factorize_(sm, sf.SvdLlmConfig(rank=16, calibration_tokens=32), data=TEXTS)  # ranks a MatMulNBits block fits
    sf.quantize_(sm, sf.WeightOnlyConfig(bits=4, group_size=16))
    _, art = run_steps(sm, load_recipe([sf.export.OnnxLMConfig(accuracy_level=0)]),
                       Run(calibration=TEXTS, artifact_dir=tmp_path / "a"))
    ids = torch.tensor([[4, 7, 33, 68, 5, 9]])
    with torch.no_grad():
        a, b = sm.model(input_ids=ids).logits, sf.load(art.folder).model(input_ids=ids).logits
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.999


def test_rank_multiple_rounds_ranks_down():
    sm = tiny_slim("llama", "causal-lm", hidden_size=64, intermediate_size=160, head_dim=16)
    sf.factorize_(sm, sf.SvdConfig(ratio=0.9, rank_multiple=8))
    ranks = [m.rank for m in sm.model.modules() if isinstance(m, LowRankLinear)]
    assert ranks and all(r % 8 == 0 for r in ranks)
    assert sm.meta["steps"][-1]["details"]["kept"] <= 0.9
    with pytest.raises(ConfigError, match="rank_multiple"):
        sf.SvdConfig(rank_multiple=3)
