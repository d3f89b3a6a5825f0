"""GGUF export: transformers' own GGUF loader (as llama.cpp's format is read elsewhere) reloads
what we write with our codes, and what GGUF cannot hold is refused."""
import pytest
import torch

import slimformer as sf
from slimformer.core.errors import ConfigError
from slimformer.core.kernels import use_kernels
from slimformer.export.gguf import export_gguf
from slimformer.testing import tiny_slim

pytest.importorskip("gguf")
REFERENCE = dict(int4_linear="dequant", int8_head="float", int8_linear="float")
TEXT = ["the cat sits on the mat", "a dog runs in the park", "the red car is fast", "hello world"] * 20


def bpe_tokenizer():
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(TEXT, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"], show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


def tiny_llama():
    tok = bpe_tokenizer()
    sm = tiny_slim("llama", "causal-lm", vocab_size=len(tok), intermediate_size=64)
    sm.tokenizer = tok
    return sm


def _logits(model, ids):
    with torch.no_grad(), use_kernels(**REFERENCE):
        return model(input_ids=ids).logits


@pytest.mark.parametrize("cfg, gtype, tol", [
    (sf.WeightOnlyConfig(bits=4, group_size=32, float_zeros=True), "Q4_1", 2e-3),
    (sf.WeightOnlyConfig(bits=4, group_size=32), "Q4_1", 2e-3),
    (sf.WeightOnlyConfig(bits=4, group_size=32, symmetric=True), "Q4_0", 2e-3),
    (sf.WeightOnlyConfig(bits=8, group_size=32, symmetric=True), "Q8_0", 2e-3),
    (None, "F32", 1e-5),
])
def test_reloads_with_our_codes(tmp_path, cfg, gtype, tol):
    """Scales and minimums go to float16 (the format's), so the reloaded model matches ours to
    float16 rounding of those; the codes are ours."""
    import gguf

    sm = tiny_llama()
    if cfg is not None:
        sf.quantize_(sm, cfg)
    path = export_gguf(sm, tmp_path / "m.gguf")
    reader = gguf.GGUFReader(str(path))
    kinds = {t.name: t.tensor_type.name for t in reader.tensors}
    assert kinds["blk.0.attn_q.weight"] == gtype and kinds["blk.1.ffn_down.weight"] == gtype
    assert "output.weight" not in kinds or not sm.model.config.tie_word_embeddings
    again = sf.load(str(path))
    ids = torch.tensor([sm.tokenizer("the cat sits on the red car")["input_ids"]])
    a, b = _logits(sm.model, ids), _logits(again.model, ids)
    assert ((a - b).norm() / a.norm()) < tol
    assert again.tokenizer("a dog runs")["input_ids"] == sm.tokenizer("a dog runs")["input_ids"]


def test_w8a8_weights_go_in_as_q8_0(tmp_path):
    sm = tiny_llama()
    sf.quantize_(sm, sf.Int8DynamicConfig())
    again = sf.load(str(export_gguf(sm, tmp_path / "m.gguf")))
    ids = torch.tensor([sm.tokenizer("the cat sits on the red car")["input_ids"]])
    a, b = _logits(sm.model, ids), _logits(again.model, ids)
    assert ((a - b).norm() / a.norm()) < 0.03    # llama.cpp's own activation rounding is not stored


@pytest.mark.parametrize("steps, match", [
    ([sf.WeightOnlyConfig(bits=4, group_size=16)], "32 wide"),
    ([sf.RotateConfig(), sf.WeightOnlyConfig(bits=4, group_size=32)], "rotated"),
    ([sf.WeightOnlyConfig(bits=8, group_size=32)], "symmetric"),
])
def test_what_gguf_cannot_hold_is_refused(tmp_path, steps, match):
    sm = tiny_llama()
    for c in steps:
        sf.quantize_(sm, c, ["the cat sits on the mat"] * 4)
    with pytest.raises(ConfigError, match=match) as e:
        export_gguf(sm, tmp_path / "m.gguf")
    assert "\n" not in str(e.value) and not list(tmp_path.iterdir())


def test_other_architectures_and_tokenizers_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="Llama-architecture"):
        export_gguf(tiny_slim("gpt2", "causal-lm"), tmp_path / "m.gguf")
    with pytest.raises(ConfigError, match="BPE"):
        export_gguf(tiny_slim("llama", "causal-lm"), tmp_path / "m.gguf")    # a word-level tokenizer
    with pytest.raises(ConfigError, match=".gguf"):
        export_gguf(tiny_llama(), tmp_path / "m.bin")
    assert not list(tmp_path.iterdir())


def test_overwrites_only_its_own_files(tmp_path):
    theirs = tmp_path / "theirs.gguf"
    theirs.write_bytes(b"not ours")
    with pytest.raises(ConfigError, match="not written by slimformer"):
        export_gguf(tiny_llama(), theirs)
    assert theirs.read_bytes() == b"not ours"
    ours = export_gguf(tiny_llama(), tmp_path / "ours.gguf")
    first = ours.stat().st_size
    sm = tiny_llama()
    sf.quantize_(sm, sf.WeightOnlyConfig(bits=4, group_size=32))
    assert export_gguf(sm, ours) == ours and ours.stat().st_size < first      # replaced by the smaller int4 file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours.gguf", "theirs.gguf"]


def test_cli_export_gguf(tmp_path, capsys):
    from slimformer.cli import main

    sm = tiny_llama()
    sf.quantize_(sm, sf.WeightOnlyConfig(bits=4, group_size=32, float_zeros=True))
    src = sf.save(sm, tmp_path / "q")
    assert main(["export", str(src), "--gguf", "--out", str(tmp_path / "m.gguf")]) == 0
    assert "Q4_1" in capsys.readouterr().out and (tmp_path / "m.gguf").stat().st_size > 0
    import json

    result = json.loads((tmp_path / "m.result.json").read_text())          # the run's record beside the file
    assert [s["method"] for s in result["steps"]] == ["gguf"] and "artifact" in result["steps"][0]["traits"]


def test_llama_cpp_runs_the_file_when_installed(tmp_path):
    """Where llama-cpp-python is installed (not in CI: it builds llama.cpp from source), llama.cpp
    itself loads the exported file and its logits follow ours."""
    llama_cpp = pytest.importorskip("llama_cpp")
    import numpy as np

    sm = tiny_llama()
    sf.quantize_(sm, sf.WeightOnlyConfig(bits=4, group_size=32, float_zeros=True))
    path = export_gguf(sm, tmp_path / "m.gguf")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, logits_all=True, verbose=False)
    ids = sm.tokenizer("the cat sits on the red car")["input_ids"]
    llm.eval(ids)
    theirs = np.array(llm.scores[: len(ids)])
    ours = _logits(sm.model, torch.tensor([ids]))[0].numpy()
    rel = np.linalg.norm(theirs - ours) / np.linalg.norm(ours)
    assert rel < 0.03     # measured 0.006: llama.cpp rounds activations to int8 blocks its own way
