"""Experiment trackers through accelerate's tracker API (tensorboard, mlflow, wandb), as a trainer
callback: every logged record (loss, learning rate, loss parts, evaluations) goes to each tracker.
TensorBoard files are written into the step's folder (OUT/logs/NN-step/tensorboard after a
compress run) without any option; `--log-with` adds (or, for tensorboard, takes over) trackers."""
from __future__ import annotations

from pathlib import Path

from ..core.errors import ConfigError
from .trainer import Callback

TRACKERS = ("tensorboard", "mlflow", "wandb")


def parse_trackers(text: str | None) -> tuple[str, ...]:
    """--log-with value: a comma-separated list of tensorboard, mlflow, wandb, or all."""
    if not text:
        return ()
    names = [t.strip().lower() for t in str(text).split(",") if t.strip()]
    if "all" in names:
        return TRACKERS
    bad = [n for n in names if n not in TRACKERS]
    if bad:
        raise ConfigError(f"--log-with {bad[0]!r} is not a tracker; accepted: {', '.join(TRACKERS)}, all")
    return tuple(dict.fromkeys(names))


def check_trackers(names) -> None:
    """A tracker whose package is missing is a one-line error before any work."""
    from accelerate.utils import is_mlflow_available, is_tensorboard_available, is_wandb_available

    have = {"tensorboard": is_tensorboard_available, "mlflow": is_mlflow_available, "wandb": is_wandb_available}
    for n in names:
        if n not in have:
            raise ConfigError(f"unknown tracker {n!r}; accepted: {', '.join(TRACKERS)}")
        if not have[n]():
            raise ConfigError(f"--log-with {n} needs the {n} package: pip install {n}")


class TrackerCallback(Callback):
    """Sends the trainer's records to accelerate trackers, one run per training step."""

    def __init__(self, names, out_dir, run_name: str = "slimformer"):
        self.names = tuple(names)
        self.out_dir = Path(out_dir) if out_dir is not None else Path.cwd()
        self.run_name = run_name
        self.writes_tensorboard = "tensorboard" in self.names
        self._trackers = None

    def _open(self):
        from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

        made = []
        for n in self.names:
            if n == "tensorboard":
                made.append(TensorBoardTracker(".", self.out_dir / "tensorboard"))
            elif n == "mlflow":
                made.append(MLflowTracker(self.run_name, logging_dir=str(self.out_dir / "mlruns")))
            elif n == "wandb":
                made.append(WandBTracker(self.run_name, dir=str(self.out_dir)))
        for t in made:
            if hasattr(t, "start"):
                t.start()
        return made

    def on_log(self, trainer, record: dict) -> None:
        if self._trackers is None:
            self._trackers = self._open()
        values = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
        for t in self._trackers:
            t.log(values, step=record["step"])

    def on_train_end(self, trainer) -> None:
        for t in self._trackers or []:
            t.finish()
        self._trackers = None


def tracker_callbacks(names, out_dir, run_name: str = "slimformer") -> list:
    """[TrackerCallback] for the named trackers (checked), or [] for none."""
    if not names:
        return []
    check_trackers(names)
    return [TrackerCallback(names, out_dir, run_name)]
