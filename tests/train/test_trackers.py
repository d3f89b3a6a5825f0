"""Training steps log through accelerate's tracker API with --log-with; TensorBoard is on by default."""
import pytest

import slimformer as sf
from slimformer.core.errors import ConfigError
from slimformer.recipes import CompressOptions
from slimformer.testing import tiny_slim
from slimformer.train.trackers import parse_trackers

TEXTS = sf.sample_sentences()[:48]
STEPS = [sf.ShrinkConfig(keep=(0,)), sf.DistillConfig(max_steps=4, batch_size=8, mixed_precision="no")]


def _events(folder):
    return sorted(p for p in folder.rglob("events.out.tfevents*"))


def test_tensorboard_by_default_and_through_accelerate(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for name, trackers in (("plain", ()), ("acc", ("tensorboard",))):
        sf.compress(tiny_slim("bert", "embedding"), STEPS, None, tmp_path / name,
                    CompressOptions(unlabeled=TEXTS, evaluation=False, trackers=trackers))
        ev = _events(tmp_path / name / "logs")
        assert len(ev) == 1, ev  # one writer: the trainer's own, or accelerate's tracker instead of it
        acc = EventAccumulator(str(ev[0].parent))
        acc.Reload()
        tags = acc.Tags()["scalars"]
        assert "loss" in tags and "lr" in tags
        assert [e.step for e in acc.Scalars("loss")][-1] == 4


def test_log_with_values():
    assert parse_trackers("all") == ("tensorboard", "mlflow", "wandb")
    assert parse_trackers("wandb,tensorboard,wandb") == ("wandb", "tensorboard")
    with pytest.raises(ConfigError, match="accepted: tensorboard, mlflow, wandb, all"):
        parse_trackers("neptune")
