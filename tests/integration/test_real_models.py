"""The real packaged models on slices of the real data in ../shared/data."""
import pytest
import torch

import slimformer as sf
from slimformer.evaluate import EvalOptions, TaskOptions, TimingOptions

pytestmark = pytest.mark.slow
QUICK = EvalOptions(timing=TimingOptions(seq_len=32, batch_size=4, warmup=1, repeats=3, throughput_repeats=2),
                    task=TaskOptions(progress=False, ppl_window=256, ppl_stride=128, ppl_max_tokens=1024))


def test_minilm_is_the_default_with_its_pooling(minilm):
    assert minilm.kind == "embedding"
    assert minilm.pooling.mode == "mean" and minilm.pooling.normalize
    assert minilm.num_params() == 22_713_216


def test_minilm_matches_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    ref = st.SentenceTransformer(str(sf.models.default_model_path()), device="cpu")
    texts = sf.sample_sentences()[:16]
    a = minilm.embed(texts)
    b = torch.tensor(ref.encode(texts))
    assert torch.allclose(a, b, atol=1e-5)


def test_minilm_stsb_slice(minilm, shared_data):
    task = sf.load_task("stsb", shared_data / "stsb" / "stsb-en-dev.csv", limit=300)
    r = sf.evaluate(minilm, task, None, QUICK)
    # the full dev set gives 86.72 (benchmarks/baseline); its first 300 pairs gave 93.3 here,
    # a broken model (random weights, wrong pooling) lands far below
    assert 88 < r.metrics["spearman"] < 97
    assert r.efficiency["bytes"] == pytest.approx(90.86e6, rel=0.01)


def test_minilm_save_reload_and_transformers(minilm, tmp_path):
    folder = sf.save(minilm, tmp_path / "m")
    again = sf.load(folder)
    texts = sf.sample_sentences()[:8]
    assert torch.equal(minilm.embed(texts), again.embed(texts))


def test_smollm2_loads_and_perplexity(smollm2, shared_data):
    assert smollm2.kind == "causal-lm" and smollm2.model.config.num_key_value_heads == 3
    assert not hasattr(smollm2.model.config, "quantization_config")
    task = sf.load_task("lm", shared_data / "wikitext2raw" / "wiki.test.raw")
    r = sf.evaluate(smollm2, task, None, EvalOptions(task=QUICK.task, efficiency=False))
    # first 1024 tokens, window 256: a real LM is far below the 49k vocabulary (about 22.5 on 16k/1024)
    assert 5 < r.metrics["perplexity"] < 60
    assert r.env["task_settings"]["ppl_window"] == 256


def test_smollm2_save_reload_identical_and_plain_transformers(smollm2, tmp_path):
    from transformers import AutoModelForCausalLM

    folder = sf.save(smollm2, tmp_path / "m")
    ids = smollm2.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a = smollm2.model(ids).logits
        b = sf.load(folder).model(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(folder)
        d = plain(ids).logits
    assert torch.equal(a, b) and torch.equal(a, d)


def test_smollm2_w4_g32_fz_repacks_the_gguf_grid_exactly(smollm2, tmp_path):
    # SmolLM2's Linear weights come from Q4_1 blocks of 32 (scale and min per block): group 32
    # with float zero points stores every one of them again at 4 bits, without loss
    import copy

    from slimformer.quantize import final_config
    from slimformer.quantize.modules import GroupQuantLinear

    sm = copy.deepcopy(smollm2)
    sf.quantize_(sm, final_config("w4-g32-fz"))
    layers = {n: m for n, m in sm.model.named_modules() if isinstance(m, GroupQuantLinear)}
    assert len(layers) == 210 and all(m.bits == 4 and m.group_size == 32 and m.float_zeros for m in layers.values())
    for n, m in layers.items():
        w = smollm2.model.get_submodule(n).weight.detach()
        err = (m.dequantized_weight() - w).abs().max() / w.abs().max()
        assert err < 1e-5, n
    ids = smollm2.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    again = sf.load(sf.save(sm, tmp_path / "q"))
    with torch.no_grad():
        a, b = sm.model(ids).logits, again.model(ids).logits
    assert torch.equal(a, b)


def test_gguf_export_of_a_saved_smollm2_folder_writes_what_llama_cpp_expects(smollm2, shared_data, tmp_path):
    """The metadata llama.cpp's own converter writes for SmolLM2 (pre-tokenizer by its probe hash,
    BOS / space-prefix flags, quantization version, general.* names), and the GGUF's vocabulary
    tokenizes 400 WikiText-2 lines as the Hugging Face tokenizer does."""
    import copy

    import gguf
    from transformers import AutoTokenizer

    from slimformer.export import export_gguf
    from slimformer.testing.packaged import smollm2_gguf

    sm = copy.deepcopy(smollm2)
    sf.quantize_(sm, sf.WeightOnlyConfig(bits=4, group_size=32, float_zeros=True))
    saved = sf.load(sf.save(sm, tmp_path / "q"))              # a folder, not the GGUF: its tokenizer is HF's
    out = export_gguf(saved, tmp_path / "m.gguf")
    fields = {f.name: f.contents() for f in gguf.GGUFReader(str(out)).fields.values()
              if f.name.startswith(("general.", "tokenizer.ggml.pre", "tokenizer.ggml.add"))}
    source = {f.name: f.contents() for f in gguf.GGUFReader(str(smollm2_gguf())).fields.values()}
    assert fields["tokenizer.ggml.pre"] == source["tokenizer.ggml.pre"] == "smollm"
    assert fields["tokenizer.ggml.add_bos_token"] is False and fields["tokenizer.ggml.add_space_prefix"] is False
    assert fields["general.quantization_version"] == 2
    for key in ("general.name", "general.organization", "general.basename", "general.license"):
        assert fields[key] == source[key]
    lines = [line for line in (shared_data / "wikitext2raw" / "wiki.test.raw").read_text().splitlines() if line.strip()]
    tok = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="m.gguf")
    assert [tok.encode(t) for t in lines[:400]] == [saved.tokenizer.encode(t) for t in lines[:400]]


@pytest.mark.parametrize("scheme", ["int8", "w4-g32-sym"])
def test_smollm2_compressed_tensors_loads_in_transformers_with_our_perplexity(smollm2, shared_data, tmp_path, scheme):
    """An int8 and an int4 scheme the CLI offers export to compressed-tensors, load with plain
    AutoModelForCausalLM (+ the compressed-tensors package) and score WikiText-2 as we do (0.5%)."""
    import copy
    import math

    pytest.importorskip("compressed_tensors")
    from transformers import AutoModelForCausalLM

    from slimformer.core.kernels import use_kernels
    from slimformer.export import export_compressed_tensors
    from slimformer.quantize import scheme_steps

    sm = copy.deepcopy(smollm2)
    for cfg in scheme_steps(scheme):
        sf.quantize_(sm, cfg)
    folder = export_compressed_tensors(sm, tmp_path / "ct")
    plain = AutoModelForCausalLM.from_pretrained(folder)
    text = (shared_data / "wikitext2raw" / "wiki.test.raw").read_text()[:20000]
    ids = smollm2.tokenizer(text, return_tensors="pt")["input_ids"][:, :1024]
    with torch.no_grad(), use_kernels(int4_linear="dequant", int8_head="float", int8_linear="float"):
        ours = math.exp(sm.model(input_ids=ids, labels=ids).loss.item())
        theirs = math.exp(plain(input_ids=ids, labels=ids).loss.item())
    assert abs(theirs / ours - 1) < 0.005, (ours, theirs)


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["w4", "w4-gptq"])
def test_smollm2_streamed_layer_by_layer_is_bit_identical_to_the_whole_model(smollm2, tmp_path, scheme):
    """SmolLM2-135M as a bf16 checkpoint: quantized streamed one layer at a time and loaded whole,
    the two saved models give the very same logits."""
    import dataclasses

    import torch

    import slimformer as sf
    from slimformer.quantize import quantize_steps

    src = tmp_path / "src"
    smollm2.model.to(torch.bfloat16).save_pretrained(src, max_shard_size="100MB")
    smollm2.model.to(torch.float32)
    smollm2.tokenizer.save_pretrained(src)
    texts = sf.sample_sentences()[:24]
    ids = smollm2.tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt")["input_ids"]
    logits = {}
    for stream in (False, True):
        model = sf.load(str(src), stream=stream)
        assert (model.stream is not None) == stream
        steps = [dataclasses.replace(s, calibration_samples=2, calibration_tokens=128, act_order=False, clip=False,
                                     refit=False) if scheme == "w4-gptq" else s
                 for s in quantize_steps(scheme)]  # plain GPTQ on 2 x 128 tokens: the same layer-by-layer path, fast
        sf.compress(model, {"name": scheme, "steps": [s.to_dict() for s in steps]}, None,
                    tmp_path / f"out-{stream}", sf.CompressOptions(evaluation=False, calibration_source=texts))
        with torch.inference_mode():
            logits[stream] = sf.load(str(tmp_path / f"out-{stream}")).model(ids).logits
    assert torch.equal(logits[False], logits[True])
