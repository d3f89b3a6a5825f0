"""Training-time pruning callbacks: the cubic schedule, masks that hold through optimizer steps,
movement scores, and group lasso driving heads / neurons to zero before removing them."""
import pytest
import torch

import slimformer as sf
from slimformer.core.errors import ConfigError
from slimformer.prune import GradualMagnitude, GroupLasso, MovementPruning, SparseLinear, cubic_sparsity
from slimformer.testing import tiny_output, tiny_slim

TEXTS = sf.sample_sentences()[:64]


def _train(sm, callbacks, steps=12, lr=1e-3):
    teacher = tiny_slim("bert", "embedding", seed=3)
    tok = sm.tokenizer

    def collate(idx):
        return dict(tok([TEXTS[i] for i in idx], padding=True, return_tensors="pt"))

    def loss_fn(batch):  # pull the embeddings towards another model's: real gradients everywhere
        with torch.no_grad():
            t = teacher.model(**batch).last_hidden_state
        return torch.nn.functional.mse_loss(sm.model(**batch).last_hidden_state, t)

    return sf.Trainer(sm.model, loss_fn, list(range(len(TEXTS))), collate,
                      sf.TrainConfig(max_steps=steps, batch_size=16, lr=lr, warmup=0.0, weight_decay=0.1),
                      callbacks=callbacks).fit()


def test_cubic_schedule():
    assert cubic_sparsity(0, 0.8, 0, 10) == 0.0
    assert cubic_sparsity(10, 0.8, 0, 10) == pytest.approx(0.8)
    assert cubic_sparsity(5, 0.8, 0, 10) == pytest.approx(0.8 - 0.8 * 0.5 ** 3)
    with pytest.raises(ConfigError, match="final sparsity=1.2"):
        GradualMagnitude(tiny_slim("bert", "embedding"), final=1.2, start=0, end=5)


@pytest.mark.parametrize("cls", [GradualMagnitude, MovementPruning])
def test_masks_hold_through_optimizer_steps(cls):
    sm = tiny_slim("bert", "embedding")
    cb = cls(sm, final=0.5, start=0, end=8, every=2)
    _train(sm, [cb], steps=12)
    for n, m in cb.layers.items():
        w = m.weight.detach()
        assert (w[~cb.masks[n]] == 0).all()  # weight decay and Adam's moments did not revive them
        assert abs((w == 0).float().mean().item() - 0.5) < 0.02
    details = cb.finalize()
    assert all(abs(v["sparsity"] - 0.5) < 0.02 for v in details.values())
    assert isinstance(sm.model.encoder.layer[0].output.dense, SparseLinear)
    assert torch.isfinite(tiny_output(sm)).all()


def test_movement_scores_differ_from_magnitude():
    a, b = tiny_slim("bert", "embedding"), tiny_slim("bert", "embedding")
    ga = GradualMagnitude(a, final=0.5, start=0, end=6, every=3)
    mb = MovementPruning(b, final=0.5, start=0, end=6, every=3)
    _train(a, [ga], steps=6)
    _train(b, [mb], steps=6)
    name = next(iter(ga.masks))
    assert not torch.equal(ga.masks[name], mb.masks[name])


def test_group_lasso_drives_groups_to_zero_then_removes_them():
    sm = tiny_slim("bert", "embedding")
    cb = GroupLasso(sm, weight=0.05)
    before = {k: v.clone() for k, v in cb.group_norms().items()}
    _train(sm, [cb], steps=40, lr=5e-3)
    after = cb.group_norms()
    k = ("ffn", 0)
    assert (after[k] < before[k]).float().mean() > 0.9  # the penalty shrinks almost every group
    n0 = sum(p.numel() for p in sm.model.parameters())
    removed = cb.finalize(threshold=0.5)
    assert sum(removed["ffn"].values()) > 0
    assert sum(p.numel() for p in sm.model.parameters()) < n0
    assert torch.isfinite(tiny_output(sm)).all()
