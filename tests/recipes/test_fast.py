"""The fast-encoder recipes: shrink -> distill -> export chained by compress, one report row per
stage, and a resumable work folder for the training step."""
import pytest
import torch

import slimformer as sf
from slimformer import compress
from slimformer.core.errors import ConfigError
from slimformer.evaluate import EvalOptions, TaskOptions, TimingOptions
from slimformer.recipes import CompressOptions, load_recipe
from slimformer.testing import tiny_slim
from slimformer.train import trainer as trainer_mod

TEXTS = sf.sample_sentences()[:64]
FAST = CompressOptions(evaluate=EvalOptions(
    timing=TimingOptions(seq_len=16, batch_size=4, warmup=1, repeats=2, throughput_repeats=1),
    task=TaskOptions(progress=False)), calibration_samples=16, unlabeled=TEXTS)
RECIPE = [sf.ShrinkConfig(keep=(1,)),
          sf.DistillConfig(losses=("embedding_cosine",), max_steps=8, batch_size=16, lr=1e-3, mixed_precision="no")]


def _stsb(tmp_path):
    rows = ["sentence1\tsentence2\tscore"] + [f"{TEXTS[i]}\t{TEXTS[i + 1]}\t{(i % 6) * 0.9:.1f}" for i in range(0, 40, 2)]
    p = tmp_path / "stsb.tsv"
    p.write_text("\n".join(rows) + "\n")
    return sf.load_task("stsb", p)


def test_shrink_step_keeps_layers_in_place_and_defaults_to_every_other():
    sm = tiny_slim("bert", "embedding", num_hidden_layers=4)
    w = sm.model.encoder.layer[2].output.dense.weight.clone()
    sf.core.config.apply_method(sm, sf.ShrinkConfig())
    assert len(sm.model.encoder.layer) == 2 and sm.model.config.num_hidden_layers == 2
    assert torch.equal(sm.model.encoder.layer[1].output.dense.weight, w)  # layers 0 and 2 kept
    with pytest.raises(ConfigError, match=r"layers \[7\] out of range; accepted: 0..1"):
        sf.core.config.apply_method(sm, sf.ShrinkConfig(keep=(0, 7)))
    with pytest.raises(ConfigError, match="repeats a layer"):
        sf.ShrinkConfig(keep=(1, 1))


def test_fast_recipes_parse_and_chain_shrink_distill_export():
    for name in ("encoder-fast", "encoder-fastest", "classifier-fast", "classifier-fastest"):
        methods = [s.method for s in load_recipe(name).steps]
        assert methods == ["shrink_layers", "distill", "deploy"], name


def test_compress_reports_each_stage_and_trains_on_the_unlabeled_texts(tmp_path):
    sm = tiny_slim("bert", "embedding")
    res = compress(sm, RECIPE, _stsb(tmp_path), tmp_path / "out", FAST)
    assert [s["method"] for s in res.stages] == ["shrink_layers", "distill"]
    assert all("spearman" in s["metrics"] and s["efficiency"]["throughput"] > 0 for s in res.stages)
    assert res.steps[1].details["texts"] == len(set(TEXTS))
    assert res.steps[0].params_after < res.steps[0].params_before
    report = (tmp_path / "out" / "report.md").read_text()
    assert "What each stage bought" in report and "2. distill" in report
    assert not list(tmp_path.glob(".out.slimformer-work"))  # the work folder goes once the output is written


def test_an_interrupted_compress_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    task = _stsb(tmp_path)
    ref = tiny_slim("bert", "embedding")
    compress(ref, RECIPE, task, tmp_path / "ref", FAST)

    real_save = trainer_mod.Trainer.save_checkpoint

    def killed_after_first_epoch(self):
        real_save(self)
        if self.step == 4:  # 64 texts / batch 16: the end of the first epoch
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(trainer_mod.Trainer, "save_checkpoint", killed_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        compress(tiny_slim("bert", "embedding"), RECIPE, task, tmp_path / "out", FAST)
    work = tmp_path / ".out.slimformer-work"
    assert (work / "02-distill" / "checkpoints").is_dir() and not (tmp_path / "out").exists()
    monkeypatch.setattr(trainer_mod.Trainer, "save_checkpoint", real_save)
    sm = tiny_slim("bert", "embedding")
    res = compress(sm, RECIPE, task, tmp_path / "out", FAST)
    assert res.resumed and res.steps[1].details["resumed_from"] == 4 and res.steps[1].details["steps"] == 8
    for (n, a), (_, b) in zip(sm.model.state_dict().items(), ref.model.state_dict().items()):
        assert torch.equal(a, b), n  # the same weights as the uninterrupted run
    assert not work.exists()


def _killed_at_first_checkpoint(monkeypatch, recipe, task, out):
    """Run compress until the trainer's first checkpoint is written, then stop it there."""
    real_save = trainer_mod.Trainer.save_checkpoint

    def killed(self):
        real_save(self)
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(trainer_mod.Trainer, "save_checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        compress(tiny_slim("bert", "embedding"), recipe, task, out, FAST)
    monkeypatch.setattr(trainer_mod.Trainer, "save_checkpoint", real_save)


def test_a_work_folder_of_another_recipe_is_not_resumed(tmp_path, monkeypatch):
    task = _stsb(tmp_path)
    _killed_at_first_checkpoint(monkeypatch, RECIPE, task, tmp_path / "out")
    other = [RECIPE[0], sf.DistillConfig(losses=("embedding_mse",), max_steps=4, batch_size=16, mixed_precision="no")]
    res = compress(tiny_slim("bert", "embedding"), other, task, tmp_path / "out", FAST)
    assert not res.resumed and res.steps[1].details["resumed_from"] == 0


def test_a_changed_step_after_training_still_resumes_the_training(tmp_path, monkeypatch):
    """The checkpoints depend on the steps up to the one that trains: a run killed during training
    and re-run with another last step (here an export) resumes instead of training again."""
    pytest.importorskip("onnxruntime")
    task = _stsb(tmp_path)
    _killed_at_first_checkpoint(monkeypatch, RECIPE + [sf.export.DeployConfig(candidates=("onnx-int8",))], task,
                                tmp_path / "out")
    res = compress(tiny_slim("bert", "embedding"), RECIPE + [sf.export.ExportConfig(quantize="none")], task,
                   tmp_path / "out", FAST)
    assert res.resumed and res.steps[1].details["resumed_from"] > 0


def test_compress_unlabeled_path_is_checked_before_any_work(tmp_path):
    opts = CompressOptions(evaluate=FAST.evaluate, unlabeled=str(tmp_path / "missing.txt"))
    with pytest.raises(sf.DataError, match="missing.txt"):
        compress(tiny_slim("bert", "embedding"), RECIPE, None, tmp_path / "out", opts)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_encoder_fast_builtin_recipe_ends_in_an_onnx_encoder(tmp_path):
    sm = tiny_slim("bert", "embedding")
    res = compress(sm, "encoder-fast", _stsb(tmp_path), tmp_path / "out", FAST)
    out = sf.load(tmp_path / "out")
    emb = out.embed(TEXTS[:4])
    assert emb.shape[1] == sm.model.config.hidden_size  # same embedding size as the original
    assert [s["method"] for s in res.stages] == ["shrink_layers", "distill", "deploy"]
    assert res.compressed.efficiency["bytes"] < res.baseline.efficiency["bytes"]


def test_classifier_fast_chain_keeps_the_labels(tmp_path):
    clf = tiny_slim("bert", "classification")
    rows = "\n".join(f"{t}\t{i % 2}" for i, t in enumerate(TEXTS[:24]))
    (tmp_path / "dev.tsv").write_text(rows + "\n")
    task = sf.load_task("classification", tmp_path / "dev.tsv")
    recipe = [sf.ShrinkConfig(), sf.DistillConfig(losses=("kd",), max_steps=4, batch_size=16, mixed_precision="no"),
              sf.export.DeployConfig(candidates=("onnx-int8",))]
    res = compress(clf, recipe, task, tmp_path / "out", FAST)
    assert [s["method"] for s in res.stages] == ["shrink_layers", "distill", "deploy"]
    assert "accuracy" in res.compressed.metrics
    out = sf.load(tmp_path / "out")
    assert out.kind == "classification"
