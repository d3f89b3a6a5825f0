"""GPTQ refinement end to end on tiny models: coordinate descent on the codes (cd_passes)."""
import copy

import torch

import slimformer as sf
from slimformer.quantize.modules import GroupQuantLinear
from slimformer.testing import tiny_output, tiny_slim

SENTENCES = sf.sample_sentences()
TEXTS, HELD_OUT = SENTENCES[:64], SENTENCES[64:96]
BASE = dict(bits=4, group_size=16, algorithm="gptq", act_order=True, clip=True, refit=True)


def _llama(layers=4):
    return tiny_slim("llama", "causal-lm", intermediate_size=48, num_hidden_layers=layers)


def _relative_error(ref, sm, texts):
    enc = sm.tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        a, b = ref.model(**enc).logits, sm.model(**enc).logits
    return float((a - b).pow(2).mean() / a.pow(2).mean())


def _quantized(sm, **kw):
    m = copy.deepcopy(sm)
    sf.quantize_(m, sf.WeightOnlyConfig(**BASE, **kw), TEXTS)
    return m


def test_coordinate_descent_runs_layer_by_layer_and_moves_codes():
    sm = _llama()
    plain, cd = _quantized(sm), _quantized(sm, cd_passes=3)
    pairs = list(zip((m for m in plain.model.modules() if isinstance(m, GroupQuantLinear)),
                     (m for m in cd.model.modules() if isinstance(m, GroupQuantLinear))))
    assert len(pairs) == 4 * 7
    assert sum(int((a.qweight != b.qweight).sum()) for a, b in pairs) > 0
    # Each layer's output error on its calibration Hessian only goes down (test_math), but on this
    # tiny random model that does not carry over to the logits (measured 0.0044 -> 0.0049 relative
    # error; on SmolLM2-135M it lowered perplexity for all three rotation seeds): bound it loosely
    e_plain, e_cd = _relative_error(sm, plain, HELD_OUT), _relative_error(sm, cd, HELD_OUT)
    assert e_cd < 1.5 * e_plain


def test_coordinate_descent_model_saves_and_reloads_identically(tmp_path):
    m = _quantized(_llama(layers=2), cd_passes=2)
    assert isinstance(m.model.model.layers[1].mlp.up_proj, GroupQuantLinear)
    out = tiny_output(m)
    again = sf.load(sf.save(m, tmp_path / "q"))
    assert torch.equal(tiny_output(again), out)
