import json

import pytest

from slimformer import CompressionResult, compress, load
from slimformer.core.errors import ConfigError
from slimformer.evaluate import EvalOptions, TaskOptions, TimingOptions
from slimformer.recipes import CompressOptions, builtin_recipes, load_recipe, parse_recipe
from slimformer.testing import tiny_slim

FAST = CompressOptions(evaluate=EvalOptions(
    timing=TimingOptions(seq_len=16, batch_size=4, warmup=1, repeats=3, throughput_repeats=2),
    task=TaskOptions(progress=False)), calibration_samples=16)


def test_builtin_recipes_parse():
    names = builtin_recipes()
    assert "baseline" in names
    for n in names:
        r = load_recipe(n)
        assert r.name and isinstance(r.steps, list)


def test_unknown_keys_are_named():
    with pytest.raises(ConfigError, match="unknown recipe key 'stepz'"):
        parse_recipe({"stepz": []})
    with pytest.raises(ConfigError, match="unknown method 'int3'"):
        parse_recipe({"steps": [{"method": "int3"}]})
    with pytest.raises(ConfigError, match="'method' key"):
        parse_recipe({"steps": [{"bits": 4}]})


def test_recipe_file_not_found_lists_builtins(tmp_path):
    with pytest.raises(ConfigError, match="baseline"):
        load_recipe(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(str(bad))


def test_compress_writes_model_result_and_report(tmp_path):
    sm = tiny_slim()
    res = compress(sm, "baseline", None, tmp_path / "out", FAST)
    out = tmp_path / "out"
    assert {"result.json", "report.md", "slimformer.json", "config.json"} <= {p.name for p in out.iterdir()}
    again = CompressionResult.from_json((out / "result.json").read_text())
    assert again.to_dict() == json.loads(res.to_json())
    assert res.compressed.fidelity["cosine"] == pytest.approx(1.0, abs=1e-6)  # no steps: unchanged
    assert "Fidelity" in (out / "report.md").read_text()
    reloaded = load(out)
    assert reloaded.meta["recipe"]["name"] == "baseline"


def test_int4_gptq_mixed_recipe_runs_on_a_tiny_lm():
    import slimformer as sf
    from slimformer.core import step_details
    from slimformer.quantize.modules import GroupQuantLinear
    from slimformer.recipes import run_steps
    from slimformer.testing import tiny_slim

    sm = tiny_slim("llama", "causal-lm", hidden_size=64, intermediate_size=64)
    run_steps(sm, load_recipe("int4-gptq-mixed"), sf.sample_sentences()[:32])
    mods = [m for m in sm.model.modules() if isinstance(m, GroupQuantLinear)]
    assert mods and all(m.bits == 4 for m in mods)
    mp = step_details(sm, "mixed_precision")
    assert mp["fallback"] == "int4-g32" and {m.group_size for m in mods} <= {32, 64}
    assert sum(m.group_size == 32 for m in mods) == len(mp["kept_int4_g32"])
