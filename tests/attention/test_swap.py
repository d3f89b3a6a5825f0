"""Swapping attention implementations into loaded models: BERT, Llama, GPT-2 and the reference
Transformer; exact where the implementation covers everything, recorded, saved and reloaded,
usable as a recipe step and from the CLI, with one-line errors for what cannot work."""
import pytest
import torch

import slimformer as sf
from slimformer.attention import AttentionConfig, current_attention
from slimformer.core.errors import ConfigError, UnsupportedArchitectureError
from slimformer.testing.conformance import check_method
from slimformer.testing.slim import tiny_output, tiny_slim

FAMILIES = [("bert", "embedding"), ("llama", "causal-lm"), ("gpt2", "causal-lm"), ("slim-transformer", "seq2seq-lm")]


@pytest.mark.parametrize("family,kind", FAMILIES)
def test_covering_window_is_exact_and_a_small_one_is_not(family, kind):
    sm = tiny_slim(family, kind)
    ref = tiny_output(sm)
    for name, opts in (("eager", {}), ("sliding_window", {"window": 64}), ("lsh", {"buckets": 1}),
                       ("block_sparse", {"block": 4, "random_blocks": 64})):
        sf.set_attention_(sm, name, **opts)
        assert torch.allclose(tiny_output(sm), ref, atol=1e-5), (name, opts)
    sf.set_attention_(sm, "sliding_window", window=2)
    assert (tiny_output(sm) - ref).abs().max() > 1e-3


@pytest.mark.parametrize("family,kind", FAMILIES[1:])
def test_generation_with_cached_keys_is_unchanged_by_a_covering_window(family, kind):
    sm = tiny_slim(family, kind)
    enc = sm.tokenize(["hello world there", "a b"])
    want = sm.model.generate(**enc, max_new_tokens=6, do_sample=False)
    sf.set_attention_(sm, "sliding_window", window=64)
    assert torch.equal(sm.model.generate(**enc, max_new_tokens=6, do_sample=False), want)


def test_attention_step_conformance_and_reload(tmp_path):
    sm, step = check_method(AttentionConfig(impl="sliding_window", options={"window": 3}), "bert", "embedding", tmp_path)
    assert step.details["impl"] == "sliding_window"
    again = sf.load(sf.save(sm, tmp_path / "again"))
    assert current_attention(again) == {"impl": "sliding_window", "options": {"window": 3}}


def test_recipe_yaml_step_and_evaluate_records_it(tmp_path):
    sm = tiny_slim("bert", "embedding")
    recipe = sf.load_recipe({"name": "local", "steps": [{"method": "attention", "impl": "pooled",
                                                          "options": {"stride": 2}}]})
    from slimformer.recipes import run_steps

    run_steps(sm, recipe, sf.sample_sentences()[:8])
    res = sf.evaluate(sm, None, None, sf.EvalOptions(efficiency=False))
    assert res.env["attention"] == {"impl": "pooled", "options": {"stride": 2}}


def test_errors_name_what_is_wrong_and_what_is_accepted():
    with pytest.raises(ConfigError, match="bidirectional only.*accepted for causal models: .*sliding_window"):
        sf.set_attention_(tiny_slim("llama", "causal-lm"), "nystrom")
    with pytest.raises(ConfigError, match="larger than the model's 128 positions; accepted: 1..128"):
        sf.set_attention_(tiny_slim("bert", "embedding"), "sliding_window", window=4096)
    with pytest.raises(UnsupportedArchitectureError, match="MPNetModel computes attention itself"):
        sf.set_attention_(tiny_slim("mpnet", "embedding"), "sliding_window", window=8)
    with pytest.raises(ConfigError, match="has no option 'wnd'; accepted: window, global_tokens"):
        AttentionConfig(impl="sliding_window", options={"wnd": 8})
    with pytest.raises(ConfigError, match="unknown attention implementation 'flash'; accepted: block_sparse"):
        sf.set_attention_(tiny_slim("bert", "embedding"), "flash")


def test_cli_evaluate_with_attention(tmp_path, capsys):
    from slimformer.cli import main

    folder = sf.save(tiny_slim("bert", "embedding"), tmp_path / "m")
    out = tmp_path / "r.json"
    main(["evaluate", str(folder), "--attention", "sliding_window", "--window", "4", "--attention-option",
          "global_tokens=0", "--out", str(out)])
    import json

    env = json.loads(out.read_text())["env"]
    assert env["attention"] == {"impl": "sliding_window", "options": {"window": 4, "global_tokens": [0]}}
    assert main(["evaluate", str(folder), "--attention-option", "oops"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
