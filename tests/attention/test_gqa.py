"""GQA / MQA conversion by mean-pooling key/value heads: exact pooling math, the config and
modules fixed, saved and reloaded, a recovery step after it, one-line errors."""
import pytest
import torch

import slimformer as sf
from slimformer.attention import GQAConfig
from slimformer.attention.gqa import pool_heads
from slimformer.core.errors import ConfigError, UnsupportedArchitectureError
from slimformer.testing.conformance import check_method
from slimformer.testing.slim import tiny_output, tiny_slim


def test_pool_heads_averages_each_group():
    w = torch.arange(4 * 2 * 3, dtype=torch.float).view(8, 3)   # 4 heads x head_dim 2, in 3
    b = torch.arange(8, dtype=torch.float)
    pw, pb = pool_heads(w, b, heads=4, groups=2, head_dim=2)
    assert torch.equal(pw[:2], (w[0:2] + w[2:4]) / 2) and torch.equal(pw[2:], (w[4:6] + w[6:8]) / 2)
    assert torch.equal(pb, torch.tensor([1.0, 2.0, 5.0, 6.0]))


def test_identical_heads_convert_exactly():
    """If each group's key/value heads are already equal, pooling them changes nothing."""
    from slimformer.core.config import apply_method

    sm = tiny_slim("llama", "causal-lm", num_key_value_heads=4)
    for layer in sm.model.model.layers:
        for proj in (layer.self_attn.k_proj, layer.self_attn.v_proj):
            w = proj.weight.data.view(4, 8, -1)
            w[1], w[3] = w[0].clone(), w[2].clone()
    ref = tiny_output(sm)
    apply_method(sm, GQAConfig(kv_heads=2))
    assert sm.model.model.layers[0].self_attn.k_proj.out_features == 16 and sm.model.config.num_key_value_heads == 2
    assert torch.allclose(tiny_output(sm), ref, atol=1e-5)


@pytest.mark.parametrize("family,kind", [("bert", "embedding"), ("llama", "causal-lm"),
                                         ("slim-transformer", "seq2seq-lm")])
def test_gqa_conformance(tmp_path, family, kind):
    sm, step = check_method(GQAConfig(kv_heads=1), family, kind, tmp_path)
    assert step.details["kv_heads"] == 1 and step.details["params_removed"] > 0
    for li in __import__("slimformer.adapters", fromlist=["x"]).get_adapter(sm.model).layers(sm.model):
        assert li.attention.num_kv_heads == 1


def test_gqa_errors():
    with pytest.raises(ConfigError, match="4 key/value heads cannot be grouped into 3; accepted: 1, 2, 4"):
        sf.compress(tiny_slim("bert", "embedding"), sf.load_recipe([GQAConfig(kv_heads=3)]))
    with pytest.raises(UnsupportedArchitectureError, match="fuses q, k and v"):
        sf.compress(tiny_slim("gpt2", "causal-lm"), sf.load_recipe([GQAConfig(kv_heads=1)]))
    with pytest.raises(ConfigError, match="kv_heads=0"):
        GQAConfig(kv_heads=0)


def test_encoder_gqa_recipe_recovers_toward_the_original(tmp_path):
    from slimformer.core.config import apply_method

    sm = tiny_slim("bert", "embedding")
    teacher = tiny_output(sm)
    texts = sf.sample_sentences()[:64]
    pooled = tiny_slim("bert", "embedding")
    apply_method(pooled, GQAConfig(kv_heads=4 // 4))
    res = sf.compress(sm, "encoder-gqa", None, tmp_path / "out",
                      sf.CompressOptions(unlabeled=texts, evaluate=sf.EvalOptions(efficiency=False)))
    assert [s.method for s in res.steps] == ["gqa", "distill"]
    again = sf.load(tmp_path / "out")
    cos = lambda out: torch.nn.functional.cosine_similarity(out.flatten(1), teacher.flatten(1)).mean()  # noqa: E731
    # the tiny model has 4 heads: the recipe's kv_heads=4 keeps them; the recovery must not hurt
    assert again.model.encoder.layer[0].attention.self.key.out_features == 4 * 8
    assert cos(tiny_output(again)) > 0.99 and cos(tiny_output(pooled)) < cos(tiny_output(again))
