"""Each distillation loss against a hand computation on tiny tensors; layer maps."""
import math

import pytest
import torch

from slimformer.distill.losses import LOSSES, LossContext, Outputs, layer_map


def test_soft_kl_with_temperature_matches_hand_value():
    s = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[0.0, 1.0]])
    T = 2.0
    p = torch.softmax(t / T, -1)[0]
    q = torch.softmax(s / T, -1)[0]
    want = float((p * (p.log() - q.log())).sum()) * T * T
    got = LOSSES.get("soft")(Outputs(logits=s), Outputs(logits=t), LossContext(temperature=T))
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_kd_mixes_hard_and_soft_by_beta():
    s = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 1.0], [0.0, 3.0]])
    y = torch.tensor([0, 1])
    ctx = LossContext(temperature=1.0, beta=0.25, labels=y)
    hard = torch.nn.functional.cross_entropy(s, y).item()
    soft = LOSSES.get("soft")(Outputs(logits=s), Outputs(logits=t), ctx).item()
    assert LOSSES.get("kd")(Outputs(logits=s), Outputs(logits=t), ctx).item() == pytest.approx(0.25 * hard + 0.75 * soft)
    ctx.labels = None
    assert LOSSES.get("kd")(Outputs(logits=s), Outputs(logits=t), ctx).item() == pytest.approx(soft)


def test_hidden_mse_uses_projection_and_mask():
    hs = [torch.zeros(1, 2, 2), torch.tensor([[[1.0, 2.0], [5.0, 5.0]]])]
    ht = [torch.zeros(1, 2, 3), torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]])]
    proj = torch.nn.ModuleDict({"hidden1": torch.nn.Linear(2, 3, bias=False)})
    with torch.no_grad():
        proj["hidden1"].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    ctx = LossContext(layer_map=[(1, 1)], projections=proj, mask=torch.tensor([[1, 0]]))
    # token 0: proj([1,2]) = [1,2,3] == teacher -> 0; token 1 is padding
    assert LOSSES.get("hidden_mse")(Outputs(hidden=hs), Outputs(hidden=ht), ctx).item() == pytest.approx(0.0, abs=1e-7)
    ctx.mask = torch.tensor([[1, 1]])
    want = (0 + ((5 - 0) ** 2 + (5 - 0) ** 2 + (10 - 0) ** 2)) / 6
    assert LOSSES.get("hidden_mse")(Outputs(hidden=hs), Outputs(hidden=ht), ctx).item() == pytest.approx(want)


def test_attention_kl_hand_value():
    a_t = torch.tensor([[[[0.5, 0.5], [1.0, 0.0]]]])
    a_s = torch.tensor([[[[0.25, 0.75], [1.0, 0.0]]]])
    ctx = LossContext(layer_map=[(1, 1)], mask=torch.tensor([[1, 1]]))
    row0 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    got = LOSSES.get("attention_kl")(Outputs(attentions=[a_s]), Outputs(attentions=[a_t]), ctx).item()
    assert got == pytest.approx(row0 / 2, rel=1e-5)


def test_minilm_relation_zero_for_same_and_works_across_widths():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 5, 8, generator=g) for _ in range(3))
    ctx = LossContext(layer_map=[(1, 1)], relation_heads=2, mask=torch.ones(2, 5))
    same = LOSSES.get("minilm_relation")(Outputs(qkv=[(q, k, v)]), Outputs(qkv=[(q, k, v)]), ctx)
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    wide = tuple(torch.randn(2, 5, 12, generator=g) for _ in range(3))
    assert LOSSES.get("minilm_relation")(Outputs(qkv=[(q, k, v)]), Outputs(qkv=[wide]), ctx).item() > 0


def test_embedding_losses_hand_values():
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    t = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    ctx = LossContext()
    assert LOSSES.get("embedding_mse")(Outputs(embedding=s), Outputs(embedding=t), ctx).item() == pytest.approx(
        ((1 + 1) + (0 + 1)) / 4)
    assert LOSSES.get("embedding_cosine")(Outputs(embedding=s), Outputs(embedding=t), ctx).item() == pytest.approx(
        1 - (0 + 1) / 2)


def test_layer_maps():
    assert layer_map("uniform", 3, 6) == [(1, 2), (2, 4), (3, 6)]
    assert layer_map("last", 2, 6) == [(1, 5), (2, 6)]
    assert layer_map("explicit", 2, 6, [1, 6]) == [(1, 1), (2, 6)]
    with pytest.raises(ValueError, match="out of range; accepted: 1..6"):
        layer_map("explicit", 2, 6, [0, 7])


def test_lm_loss_is_next_token_cross_entropy_on_real_tokens():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]]])
    ids = torch.tensor([[0, 1, 2]])
    ctx = LossContext(input_ids=ids, mask=torch.tensor([[1, 1, 0]]))
    want = torch.nn.functional.cross_entropy(logits[0, :1], ids[0, 1:2]).item()  # the last target is padding
    assert LOSSES.get("lm")(Outputs(logits=logits), Outputs(), ctx).item() == pytest.approx(want)
