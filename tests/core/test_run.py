"""The Run, the lazy original model, traits read by the pipeline, and every command through it."""
import json
from pathlib import Path

import pytest
import torch

import slimformer as sf
from slimformer.core.errors import ConfigError, SlimformerError
from slimformer.core.run import Original, Run
from slimformer.recipes import load_recipe, run_steps
from slimformer.testing import tiny_output, tiny_slim

SRC = Path(sf.__file__).parent


def test_no_module_state_and_no_method_name_lists():
    for f in SRC.rglob("*.py"):
        text = f.read_text()
        assert "ContextVar" not in text, f"{f}: state passed through a ContextVar"
    for f in (SRC / "recipes").glob("*.py"):
        text = f.read_text()
        for name in ("\"distill\"", "\"onnx\"", "\"deploy\"", "\"rotate\""):
            assert name not in text, f"{f}: the pipeline names method {name} instead of reading its traits"


def test_original_reloads_an_unchanged_folder_lazily(tmp_path):
    folder = sf.save(tiny_slim(), tmp_path / "m")
    sm = sf.load(folder)
    orig = Original(sm, tmp_path / "snap")
    assert not orig.loaded and not (tmp_path / "snap").exists()  # nothing copied, nothing in memory
    ref = tiny_output(sm)
    sf.prune_(sm, sf.FFNPruningConfig(amount=0.5))          # the model changes in place afterwards
    again = orig()
    assert orig.loaded and torch.equal(tiny_output(again), ref) and again is orig()
    orig.release()
    assert not orig.loaded


def test_original_of_a_changed_model_is_a_snapshot(tmp_path):
    sm = tiny_slim()
    sf.quantize_(sm, sf.Int8DynamicConfig())                 # a recorded step: not its source any more
    ref = tiny_output(sm)
    orig = Original(sm, tmp_path / "snap")
    assert (tmp_path / "snap").exists()
    with torch.no_grad():
        sm.model.get_input_embeddings().weight.mul_(0.5)
    assert torch.equal(tiny_output(orig()), ref)


def test_an_unrecorded_change_is_caught(tmp_path):
    folder = sf.save(tiny_slim(), tmp_path / "m")
    sm = sf.load(folder)
    with torch.no_grad():
        next(sm.model.parameters()).add_(1.0)                # changed without a step: not the folder's model
    orig = Original(sm, tmp_path / "snap")
    with pytest.raises(SlimformerError, match="changed in memory"):
        orig()


def test_a_step_needing_the_original_outside_a_recipe_says_so():
    sm = tiny_slim()
    with pytest.raises(ConfigError, match="no teacher"):
        sf.core.apply_method(sm, sf.DistillConfig(max_steps=1), Run.of(["a b c"]))


def test_wraps_training_needs_a_training_step_after_it():
    with pytest.raises(ConfigError, match="acts during training and needs a step that trains after it"):
        run_steps(tiny_slim(), load_recipe([sf.prune.MovementConfig(), sf.Int8DynamicConfig()]), ["a b"])
    with pytest.raises(ConfigError, match="must be the last step"):
        run_steps(tiny_slim(), load_recipe([sf.ExportConfig(quantize="none"), sf.Int8DynamicConfig()]), ["a b"])


def test_neuron_masking_is_exact_and_resumable():
    from slimformer.prune import NeuronMasking

    sm = tiny_slim("bert", "embedding")
    cb = NeuronMasking(sm, 0.5, 0.0, 1.0, every=1, score="magnitude")

    class T:  # what the callback reads of the trainer
        total_steps = 4

    cb.on_step_end(T, 4)                                      # the end of the schedule: 50% masked
    masks = cb.masks()
    assert [int(m.sum()) for m in masks] == [19, 19]
    masked = tiny_output(sm)
    state = cb.state_dict()
    cb2 = NeuronMasking(tiny_slim("bert", "embedding"), 0.5, 0.0, 1.0)
    cb2.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(cb2.masks(), masks))
    cb2.remove_hooks()
    out = cb.finalize()
    assert out["neurons_removed"] == {0: 18, 1: 18}
    assert torch.allclose(tiny_output(sm), masked, atol=1e-5)  # removal changes nothing the mask did not


def test_movement_scores_move_masked_neurons_too():
    """The gate's gradient is straight-through: a masked neuron's score keeps changing."""
    from slimformer.prune import NeuronMasking

    sm = tiny_slim("bert", "embedding")
    cb = NeuronMasking(sm, 0.5, 0.0, 1.0, every=1, score="movement")
    with torch.no_grad():
        cb.gates[0][:5] = 0.0
    enc = sm.tokenize(sf.sample_sentences()[:4])
    sm.model(**enc).last_hidden_state.pow(2).sum().backward()
    cb.on_before_optimizer_step(None, 1)
    assert (cb.movement[0][:5] != 0).all()


def _result(folder):
    return json.loads((Path(folder) / "result.json").read_text())


def test_every_command_writes_the_same_result(tmp_path, capsys):
    from slimformer.cli import main

    folder = sf.save(tiny_slim("bert", "embedding"), tmp_path / "m")
    sents = tmp_path / "s.txt"
    sents.write_text("\n".join(sf.sample_sentences()[:32]))
    runs = {
        "q": ["quantize", str(folder), "--scheme", "int8"],
        "p": ["prune", str(folder), "--structure", "heads", "--amount", "0.5"],
        "d": ["distill", "--teacher", str(folder), "--keep-layers", "0", "--unlabeled", str(sents), "--max-steps", "2",
              "--batch-size", "8"],
    }
    for out, argv in runs.items():
        assert main(argv + ["--out", str(tmp_path / out)]) == 0, capsys.readouterr().err
        r = _result(tmp_path / out)
        assert r["recipe"]["steps"] and len(r["steps"]) == len(r["recipe"]["steps"])
        assert {"method", "params_before", "params_after", "seconds", "traits"} <= set(r["steps"][0])
    assert [s["method"] for s in _result(tmp_path / "d")["steps"]] == ["shrink_layers", "distill"]
    logs = tmp_path / "d" / "logs" / "02-distill"       # the training logs land in the output folder
    assert (logs / "metrics.jsonl").read_text().strip()
    assert list((logs / "tensorboard").glob("events.out.tfevents.*"))


def test_out_that_is_the_input_is_refused_before_any_work(tmp_path, capsys):
    from slimformer.cli import main

    folder = sf.save(tiny_slim("bert", "embedding"), tmp_path / "m")
    before = sorted(p.name for p in folder.iterdir())
    for out in (folder, folder / "inside", tmp_path):
        assert main(["quantize", str(folder), "--scheme", "int8", "--out", str(out)]) == 2
        assert "would replace the input" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == before
