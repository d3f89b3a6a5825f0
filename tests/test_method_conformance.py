"""Every registered method has a conformance case, and every case passes.

A new method registered without a case here fails test_every_registered_method_has_a_case: add
one (check_method for in-place methods, check_artifact for exports, check_training for steps that
train or act during training)."""
import pytest
import torch

import slimformer as sf
from slimformer.core.config import METHODS, traits_of
from slimformer.testing import tiny_output, tiny_slim
from slimformer.testing.conformance import check_artifact, check_method, check_training

TEXTS = sf.sample_sentences()[:48]


def _cos(a, b) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten().float(), b.flatten().float(), dim=0).item()


def _embeds_close(min_cos):
    return lambda sm, art: _cos(sm.embed(TEXTS[:8]), art.embed(TEXTS[:8])) > min_cos


def _lm_close(min_cos):
    def close(sm, art):
        ids = torch.tensor([[4, 7, 33, 68, 5, 9]])
        with torch.no_grad():
            return _cos(sm.model(input_ids=ids).logits, art.model(input_ids=ids).logits) > min_cos
    return close


def _quantized_llama(**kw):
    sm = tiny_slim("llama", "causal-lm", intermediate_size=64, **kw)
    sf.quantize_(sm, sf.WeightOnlyConfig(bits=4, group_size=32, float_zeros=kw.pop("fz", False)))
    return sm


def _gguf_llama():
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(TEXTS, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"],
                            show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>",
                                  eos_token="<|endoftext|>")
    sm = tiny_slim("llama", "causal-lm", vocab_size=len(tok), intermediate_size=64)
    sm.tokenizer = tok
    sf.quantize_(sm, sf.WeightOnlyConfig(bits=4, group_size=32, float_zeros=True))
    return sm


def _ffn_sizes(sm):
    return [layer.intermediate.dense.out_features for layer in sm.model.encoder.layer]


def _distill(**kw):
    return sf.DistillConfig(max_steps=kw.pop("max_steps", 6), batch_size=8, **kw)


def _fewer(step, ref, out):
    return step.params_after < step.params_before


def _params_fall(records, model):
    return records[-1].params_after < records[0].params_before


CASES = {
    # in place: check_method (applies, forward, round trip, a numeric bound, save -> load identical)
    "attention": lambda p: check_method(sf.AttentionConfig(impl="sdpa"), "bert", "embedding", p, min_sqnr=60),
    "awq": lambda p: check_method(sf.AwqConfig(bits=4, group_size=16, calibration_tokens=32), "llama", "causal-lm", p,
                                  min_sqnr=40, data=TEXTS),
    "cast": lambda p: check_method(sf.CastConfig(dtype="bf16"), "bert", "embedding", p, min_sqnr=20),
    "drop_layers": lambda p: check_method(sf.LayerDropConfig(count=1, importance="last"), "bert", "embedding", p,
                                          bound=lambda st, r, o: st.params_after < st.params_before),
    "gqa": lambda p: check_method(sf.GQAConfig(kv_heads=2), "bert", "embedding", p,
                                  bound=lambda st, r, o: st.params_after < st.params_before),
    "int8_dynamic": lambda p: check_method(sf.Int8DynamicConfig(), "bert", "embedding", p, min_sqnr=28),
    "int8_static": lambda p: check_method(sf.Int8StaticConfig(calibration_tokens=32), "bert", "embedding", p,
                                          min_sqnr=18, data=TEXTS),
    "magnitude": lambda p: check_method(sf.MagnitudeConfig(amount=0.5), "bert", "embedding", p, min_sqnr=3),
    "mixed_precision": lambda p: check_method(sf.MixedPrecisionConfig(scheme="int8", max_drop=0.0, max_float=2),
                                              "bert", "embedding", p, min_sqnr=28, data=TEXTS),
    "prune_ffn": lambda p: check_method(sf.FFNPruningConfig(amount=0.5), "bert", "embedding", p,
                                        bound=lambda st, r, o: st.params_after < st.params_before),
    "prune_heads": lambda p: check_method(sf.HeadPruningConfig(amount=0.5), "bert", "embedding", p,
                                          bound=lambda st, r, o: st.params_after < st.params_before),
    "rotate": lambda p: check_method(sf.RotateConfig(seed=0), "llama", "causal-lm", p, min_sqnr=60),
    "shrink_layers": lambda p: check_method(sf.ShrinkConfig(keep=(1,)), "bert", "embedding", p,
                                            bound=lambda st, r, o: st.params_after < st.params_before),
    "smoothquant": lambda p: check_method(sf.SmoothQuantConfig(alpha=0.5), "bert", "embedding", p, min_sqnr=60,
                                          data=TEXTS),
    "sparsegpt": lambda p: check_method(sf.SparseGPTConfig(amount=0.5, calibration_tokens=32), "llama", "causal-lm",
                                        p, min_sqnr=3, data=TEXTS),
    "wanda": lambda p: check_method(sf.WandaConfig(amount=0.5, calibration_tokens=32), "llama", "causal-lm", p,
                                    min_sqnr=3, data=TEXTS),
    "weight_only": lambda p: check_method(sf.WeightOnlyConfig(bits=4, group_size=16), "llama", "causal-lm", p,
                                          min_sqnr=12),
    # factorization: the bound is the parameter count falling (and SQNR where the method keeps most of the signal)
    "svd": lambda p: check_method(sf.SvdConfig(ratio=0.8), "bert", "embedding", p, min_sqnr=25, bound=_fewer),
    "fwsvd": lambda p: check_method(sf.FwsvdConfig(ratio=0.8, calibration_tokens=32), "llama", "causal-lm", p,
                                    min_sqnr=5, bound=_fewer, data=TEXTS),
    "asvd": lambda p: check_method(sf.AsvdConfig(ratio=0.8, calibration_tokens=32), "bert", "embedding", p,
                                   min_sqnr=25, bound=_fewer, data=TEXTS),
    "svd_llm": lambda p: check_method(sf.SvdLlmConfig(ratio=0.8, allocation="spectrum", calibration_tokens=32),
                                      "llama", "causal-lm", p, min_sqnr=8, bound=_fewer, data=TEXTS),
    "basis_sharing": lambda p: check_method(sf.BasisSharingConfig(ratio=0.8, calibration_tokens=32), "bert",
                                            "embedding", p, min_sqnr=30, bound=_fewer, data=TEXTS),
    "share_layers": lambda p: check_method(sf.ShareLayersConfig(), "bert", "embedding", p, min_sqnr=20,
                                           bound=_fewer),
    "factorize_embedding": lambda p: check_method(sf.EmbeddingFactorConfig(rank=16), "bert", "embedding", p,
                                                  min_sqnr=5, bound=_fewer),
    # exports: check_artifact (the artifact reloads and computes what the model did)
    "onnx": lambda p: check_artifact(sf.ExportConfig(quantize="none"), tiny_slim("bert", "embedding"), p,
                                     close=_embeds_close(0.9999)),
    "deploy": lambda p: check_artifact(sf.export.DeployConfig(candidates=("onnx-int8",)),
                                       tiny_slim("bert", "embedding"), p, close=_embeds_close(0.95)),
    "onnx_lm": lambda p: check_artifact(sf.export.OnnxLMConfig(accuracy_level=0),
                                        _quantized_llama(hidden_size=64, head_dim=16), p, close=_lm_close(0.999)),
    "gguf": lambda p: check_artifact(sf.export.GgufConfig(), _gguf_llama(), p, close=_lm_close(0.999)),
    "compressed_tensors": lambda p: check_artifact(sf.export.CompressedTensorsConfig(), _quantized_llama(), p),
    "executorch": lambda p: check_artifact(sf.export.ExecuTorchConfig(quantize="int8"), tiny_slim("bert", "embedding"),
                                           p, close=_embeds_close(0.98)),
    # training, and pruning during training: check_training (the model as its own teacher)
    "distill": lambda p: check_training([sf.ShrinkConfig(keep=(0,)), _distill()], tiny_slim("bert", "embedding"), p,
                                        {"unlabeled": TEXTS}, bound=_params_fall),
    "finetune": lambda p: check_training(
        [sf.FinetuneConfig(max_steps=3, batch_size=8)], tiny_slim("bert", "classification"), p,
        {"train_task": sf.data.Task("classification", [(t, i % 2) for i, t in enumerate(TEXTS)], source="<test>")},
        bound=lambda recs, m: recs[0].details["steps"] == 3),
    "movement": lambda p: check_training(
        [sf.prune.MovementConfig(amount=0.5, every=2), _distill()], tiny_slim("bert", "embedding"), p,
        {"unlabeled": TEXTS}, bound=lambda recs, m: _ffn_sizes(m) == [19, 19] and _params_fall(recs, m)),
    "gradual_magnitude": lambda p: check_training(
        [sf.prune.GradualMagnitudeConfig(amount=0.5, every=2), _distill()], tiny_slim("bert", "embedding"), p,
        {"unlabeled": TEXTS}, bound=lambda recs, m: _ffn_sizes(m) == [19, 19]),
    "group_lasso": lambda p: check_training(
        [sf.prune.GroupLassoConfig(weight=0.5, threshold=0.9), _distill(max_steps=20)],
        tiny_slim("bert", "embedding"), p, {"unlabeled": TEXTS}, bound=_params_fall),
}


def test_every_registered_method_has_a_case():
    missing = sorted(set(METHODS.names()) - set(CASES))
    assert not missing, f"registered methods without a conformance case: {missing}"
    assert not sorted(set(CASES) - set(METHODS.names())), "cases for methods that are not registered"


@pytest.mark.parametrize("method", sorted(CASES))
def test_conformance_case(method, tmp_path):
    if method in ("onnx", "deploy", "onnx_lm"):
        pytest.importorskip("onnxruntime")
    if method in ("gguf",):
        pytest.importorskip("gguf")
    if method == "executorch":
        pytest.importorskip("executorch")
    CASES[method](tmp_path)


def test_traits_are_declared_where_registered():
    assert traits_of("onnx").artifact and traits_of("deploy").artifact and traits_of("gguf").artifact
    assert traits_of("distill").trains and traits_of("finetune").trains and traits_of("distill").needs_original
    assert traits_of("movement").wraps_training and not traits_of("rotate").portable
    assert traits_of("magnitude").bytes_only and traits_of("prune_ffn").changes_shapes
