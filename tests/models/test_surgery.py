"""Shared surgery: slicing, structural changes through the adapters (exact parameter counts,
forward runs), and reloading models whose layers differ in size."""
import pytest
import torch

import slimformer as sf
from slimformer.adapters import get_adapter
from slimformer.adapters.base import linear_weight
from slimformer.core.errors import ConfigError
from slimformer.models.surgery import (remove_ffn_neurons_, remove_heads_, remove_layers_, set_module,
                                       slice_linear)
from slimformer.testing import tiny_output, tiny_slim

FAMILIES = [("bert", "embedding"), ("llama", "causal-lm"), ("gpt2", "causal-lm"), ("t5", "seq2seq-lm"),
            ("marian", "seq2seq-lm"), ("distilbert", "embedding"), ("mpnet", "embedding")]


def _params(sm):
    return sum(p.numel() for p in sm.model.parameters())


@pytest.mark.parametrize("conv", [False, True])
def test_slice_linear_keeps_rows_and_columns(conv):
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    m = Conv1D(6, 5) if conv else nn.Linear(5, 6)
    torch.nn.init.normal_(m.weight)
    torch.nn.init.normal_(m.bias)
    out_idx, in_idx = torch.tensor([0, 2, 5]), torch.tensor([1, 4])
    s = slice_linear(m, out_idx, in_idx)
    assert type(s) is type(m)
    torch.testing.assert_close(linear_weight(s), linear_weight(m)[out_idx][:, in_idx])
    x = torch.randn(3, 5)
    torch.testing.assert_close(s(x[:, in_idx]), (x[:, in_idx] @ linear_weight(m)[out_idx][:, in_idx].T) + m.bias[out_idx])


@pytest.mark.parametrize("family,kind", FAMILIES)
def test_remove_ffn_neurons_non_uniform_and_reload(tmp_path, family, kind):
    sm = tiny_slim(family, kind)
    infos = get_adapter(sm.model).layers(sm.model)
    gated = infos[0].ffn.gate is not None
    hidden = infos[0].ffn.down.weight.shape[0] if family != "gpt2" else infos[0].ffn.down.weight.shape[1]
    before = _params(sm)
    remove_ffn_neurons_(sm.model, {0: range(0, 37, 2)})  # layer 0: 19 of 37 neurons
    removed = 18 * hidden * (3 if gated else 2) + 18 * (0 if family in ("t5", "llama") else 1)  # + up bias
    assert before - _params(sm) == removed
    assert [li.ffn.intermediate_size for li in get_adapter(sm.model).layers(sm.model)][:2] == [19, 37]
    out = tiny_output(sm)
    again = sf.load(sf.save(sm, tmp_path / "m"))  # per-layer sizes come back from the config
    assert torch.equal(tiny_output(again), out)


@pytest.mark.parametrize("family,kind", FAMILIES)
def test_remove_heads_counts_and_reload(tmp_path, family, kind):
    sm = tiny_slim(family, kind)
    a = get_adapter(sm.model).layers(sm.model)[0].attention
    n_layers = len(get_adapter(sm.model).layers(sm.model))
    shared_bias = a.rel_bias is not None  # T5 / MPNet: the same heads in every layer of the stack
    plan = {i: [1] for i in range(n_layers)} if shared_bias else {0: [1]}
    if family == "t5":  # encoder and decoder have their own tables; cross-attention keeps its heads
        plan = {i: [1] for i in range(n_layers)}
    before = _params(sm)
    left = remove_heads_(sm.model, plan)
    assert all(v == a.num_kv_heads - 1 for v in left.values())
    layers = get_adapter(sm.model).layers(sm.model)
    group = a.num_heads // a.num_kv_heads
    assert layers[0].attention.num_heads == a.num_heads - group
    assert before > _params(sm)
    out = tiny_output(sm)
    assert torch.isfinite(out).all()
    again = sf.load(sf.save(sm, tmp_path / "m"))
    assert torch.equal(tiny_output(again), out)


def test_remove_heads_output_matches_zeroed_o_columns():
    """Removing a head equals zeroing its columns of o (its contribution), exactly."""
    sm = tiny_slim("llama", "causal-lm")
    ref = tiny_slim("llama", "causal-lm")
    a = get_adapter(ref.model).layers(ref.model)[1].attention
    group = a.num_heads // a.num_kv_heads
    cols = torch.arange(1 * group * a.head_dim, 2 * group * a.head_dim)  # kv head 1 and its query group
    with torch.no_grad():
        a.o.weight[:, cols] = 0
    remove_heads_(sm.model, {1: [1]})
    torch.testing.assert_close(tiny_output(sm), tiny_output(ref), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family,kind", [("bert", "embedding"), ("llama", "causal-lm"), ("gpt2", "causal-lm")])
def test_remove_layers_keeps_the_chosen_ones(tmp_path, family, kind):
    sm = tiny_slim(family, kind)
    second = get_adapter(sm.model).layers(sm.model)[1].module
    remove_layers_(sm.model, [1])
    layers = get_adapter(sm.model).layers(sm.model)
    assert len(layers) == 1 and layers[0].module is second
    out = tiny_output(sm)
    assert torch.equal(tiny_output(sf.load(sf.save(sm, tmp_path / "m"))), out)


def test_bad_structural_changes_are_clear_errors():
    sm = tiny_slim("bert", "embedding")
    with pytest.raises(ConfigError, match="would lose all of its 4 heads"):
        remove_heads_(sm.model, {0: [0, 1, 2, 3]})
    with pytest.raises(ConfigError, match="layer 7 is out of range; accepted: 0..1"):
        remove_heads_(sm.model, {7: [0]})
    with pytest.raises(ConfigError, match="keep at least one"):
        remove_layers_(sm.model, [])
    with pytest.raises(ConfigError, match="neuron indices of layer 0 must be in 0..36"):
        remove_ffn_neurons_(sm.model, {0: [40]})
    t5 = tiny_slim("t5", "seq2seq-lm")
    with pytest.raises(ConfigError, match="give keep per stack"):
        remove_layers_(t5.model, [0])
    with pytest.raises(ConfigError, match="same heads in every layer"):
        remove_heads_(t5.model, {0: [1], 1: [2]})


def test_quantized_layers_cannot_be_sliced():
    sm = tiny_slim("llama", "causal-lm")
    sf.quantize_(sm, sf.WeightOnlyConfig(bits=4, group_size=16))
    with pytest.raises(TypeError, match="cannot be sliced"):
        slice_linear(sm.model.model.layers[0].mlp.up_proj, torch.arange(4))


def test_set_module_replaces_by_name():
    sm = tiny_slim("bert", "embedding")
    new = torch.nn.Identity()
    set_module(sm.model, "encoder.layer.0.output.dense", new)
    assert sm.model.encoder.layer[0].output.dense is new
