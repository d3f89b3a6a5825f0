"""Kernel selection (core.kernels): the choice, its overrides and errors, and that every
implementation available on this machine gives the reference's outputs within its stated bound."""
import pytest
import torch

from slimformer.core import kernels as K
from slimformer.core.errors import ConfigError
from slimformer.core.qmath import quantize_groupwise
from slimformer.quantize.modules import GroupQuantLinear, Int8Linear


def group_linear(out_f, in_f, group, float_zero=False):
    lin = torch.nn.Linear(in_f, out_f)
    q, s, z = quantize_groupwise(lin.weight, 4, group, float_zero=float_zero)
    return GroupQuantLinear.from_codes(lin, q, s, z, 4, group)


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    monkeypatch.delenv(K.ENV, raising=False)
    K.set_kernels(**{op: None for op in K.OPS})
    yield
    K.set_kernels(**{op: None for op in K.OPS})


def test_every_op_has_a_choice_with_a_reason_and_the_reference_last():
    rows = K.kernel_report()
    assert {r["op"] for r in rows} == set(K.OPS)
    for r in rows:
        assert r["chosen"] in r["candidates"] and r["candidates"][r["chosen"]]["available"]
        assert r["why"]
        assert list(r["candidates"])[-1] in ("float", "dequant")  # the portable reference is always there
        assert r["candidates"][list(r["candidates"])[-1]]["available"]
    assert K.kernel_choices() == {r["op"]: r["chosen"] for r in rows}


def test_int8_choice_follows_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(K, "cpu_flags", lambda: {"avx2"})
    K.set_kernels(int8_linear=None)
    if not torch.cuda.is_available():
        assert K.kernel("int8_linear") == "float"
    monkeypatch.setattr(K, "cpu_flags", lambda: {"avx2", "avx512_vnni"})
    K.set_kernels(int8_linear=None)          # forget the cached choice
    assert K.kernel("int8_linear") == ("int_mm" if K._has_op("_int_mm") else "float")


def test_overrides_by_call_context_and_environment(monkeypatch):
    with K.use_kernels(int8_linear="float", int4_linear="dequant"):
        assert K.kernel("int8_linear") == "float" and K.kernel("int4_linear") == "dequant"
        assert "asked for" in {r["op"]: r for r in K.kernel_report()}["int8_linear"]["why"]
    monkeypatch.setenv(K.ENV, "int4_linear=dequant, int8_head=float")
    K.set_kernels(int4_linear=None, int8_head=None)
    assert K.kernel("int4_linear") == "dequant" and K.kernel("int8_head") == "float"
    assert K.ENV in {r["op"]: r for r in K.kernel_report()}["int8_head"]["why"]


@pytest.mark.parametrize("bad", [dict(int8_linear="fast"), dict(int9_linear="float")])
def test_bad_names_are_one_line_errors(bad):
    with pytest.raises(ConfigError) as e:
        K.set_kernels(**bad)
    assert "accepted" in str(e.value) and "\n" not in str(e.value)


def test_bad_environment_value_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv(K.ENV, "int8_linear")
    K.set_kernels(int8_linear=None)
    with pytest.raises(ConfigError, match="OP=IMPL"):
        K.kernel("int8_linear")


def _impls(op):
    return [i.name for i in K.OPS[op] if i.available()[0]]


@pytest.mark.parametrize("act", ["token", "static"])
def test_int8_linear_every_kernel_gives_the_reference_products(act):
    torch.manual_seed(0)
    lin = torch.nn.Linear(96, 40)
    q = Int8Linear.from_float(lin, act=act, act_scale=0.02 if act == "static" else None)
    x = torch.randn(3, 7, 96)
    outs = {}
    for name in _impls("int8_linear"):
        with K.use_kernels(int8_linear=name):
            outs[name] = q(x)
    ref = outs["float"]
    for name, y in outs.items():
        # integer products are exact in both (int32 vs float32 below 2^24): identical up to the
        # order of the float scale multiplications
        torch.testing.assert_close(y, ref, rtol=1e-6, atol=1e-6, msg=name)
    assert q.kernel_op == "int8_linear" and Int8Linear.from_float(lin, act=None).kernel_op is None


@pytest.mark.parametrize("bias", [True, False])
def test_int8_linear_in_row_chunks_equals_one_token_at_a_time(bias):
    """The per-token path runs ROWS tokens at a time: across chunk boundaries (a batch of
    2.3 chunks) every token gets the output it gets alone."""
    torch.manual_seed(0)
    q = Int8Linear.from_float(torch.nn.Linear(48, 24, bias=bias))
    x = torch.randn(3, (Int8Linear.ROWS * 23) // 30, 48)
    y = q(x)
    assert y.shape == (3, x.shape[1], 24)
    alone = torch.stack([torch.cat([q(x[b, t:t + 1]) for t in range(x.shape[1])]) for b in range(3)])
    torch.testing.assert_close(y, alone, rtol=0, atol=0)


@pytest.mark.parametrize("float_zero", [False, True])
@pytest.mark.parametrize("shape", [(64, 128, 32), (48, 256, 128), (32, 576, 128), (40, 128, 32), (64, 96, 16)])
def test_int4_linear_every_kernel_within_bf16_rounding_of_dequant(shape, float_zero):
    out_f, in_f, group = shape     # 576 / 128: a short last group (padded); out 40 (% 16 != 0) and
                                   # group 16: the dequant fallback
    torch.manual_seed(0)
    q = group_linear(out_f, in_f, group, float_zero)
    x = torch.randn(5, in_f)
    with K.use_kernels(int4_linear="dequant"):
        ref = q(x)
    for name in _impls("int4_linear"):
        with K.use_kernels(int4_linear=name):
            y = q(x)
        assert y.shape == ref.shape and y.dtype == ref.dtype
        rel = (y - ref).norm() / ref.norm()
        assert rel < 0.01, (name, rel)
        if name == "int4pack" and not q.int4pack_ok():
            assert torch.equal(y, ref)       # the layer the kernel cannot take falls back exactly
    assert q.int4pack_ok() == (out_f % 16 == 0 and group in (32, 64, 128, 256))


def test_int4pack_cache_follows_the_weights():
    if "int4pack" not in _impls("int4_linear"):
        pytest.skip("no CPU int4 kernel in this torch build")
    torch.manual_seed(0)
    q = group_linear(32, 64, 32)
    x = torch.randn(2, 64)
    with K.use_kernels(int4_linear="int4pack"):
        before = q(x)
        with torch.no_grad():
            q.scales.mul_(2)                 # an in-place change must repack
        after = q(x)
    with K.use_kernels(int4_linear="dequant"):
        ref = q(x)
    assert not torch.allclose(before, after)
    assert (after - ref).norm() / ref.norm() < 0.01
    assert not any("int4pack" in k for k in q.state_dict())   # the packed copy is never saved


def test_kernels_of_lists_the_ops_a_model_uses():
    net = torch.nn.Sequential(Int8Linear.from_float(torch.nn.Linear(8, 8), act="token"),
                              group_linear(16, 32, 32))
    assert set(K.kernels_of(net)) == {"int8_linear", "int4_linear"}
    assert K.kernels_of(torch.nn.Linear(4, 4)) == {}


def test_int8_head_on_int_mm_picks_the_float_heads_argmax():
    """The tied int8 head on int8 activations recomputes its largest logits with float activations:
    greedy decoding picks what the weight-only head picks (int8 activations alone flipped near-ties)."""
    import torch
    from torch import nn

    from slimformer.core.kernels import use_kernels
    from slimformer.quantize.modules import Int8Embedding, Int8TiedHead

    torch.manual_seed(0)
    head = Int8TiedHead(Int8Embedding.from_float(nn.Embedding(500, 64)))
    x = torch.randn(4, 7, 64)
    with use_kernels(int8_head="int_mm"):
        a = head(x)
    with use_kernels(int8_head="float"):
        b = head(x)
    assert torch.equal(a.argmax(-1), b.argmax(-1))
    torch.testing.assert_close(a.max(-1).values, b.max(-1).values, rtol=1e-5, atol=1e-5)
    assert (a - b).abs().max() > 1e-3          # the rest stays int8-activation logits (the fast path)
