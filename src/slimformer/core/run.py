"""The Run: everything a recipe step may need, passed to its handler explicitly.

    @register_method(SvdConfig, traits=Traits(needs_calibration=True, changes_shapes=True))
    def svd(model, cfg: SvdConfig, run: Run) -> Applied:
        texts = run.calibration            # calibration texts
        teacher = run.original()           # the model before the recipe (loaded on first use)
        ...

`compress` builds one Run per recipe run and gives each step a view of it with the step's own
folder (`run.for_step(i, method)`); the public verbs (`quantize_`, `prune_`, ...) build a Run from
the data they are given. Nothing a handler needs lives in module state.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import SlimformerError

LOG = logging.getLogger("slimformer")


class Original:
    """The model as it was before a run's first step, as a lazy reference: nothing is held in
    memory until a step (a recovery's teacher) or the final fidelity measure asks for it.

    A model that no step has changed and that came from a folder, a .gguf or the packaged default
    is reloaded from there (its weights' fingerprint is checked on reload); any other model is
    written once to `folder` (slimformer's own format) and reloaded from that. Without a folder
    (e.g. the API on a model built in memory), a copy is kept in memory."""

    def __init__(self, model, folder: Path | None = None):
        self.source = getattr(model, "source", "")
        self.kind = getattr(model, "kind", None)
        self._model = None
        self._path: str | None = None
        self._fingerprint = None
        if _reloadable(model):
            src = str(model.source)
            self._path = "default" if src.startswith("default:") else src
            self._fingerprint = weights_fingerprint(model.model)
        elif folder is not None and hasattr(model, "model") and hasattr(model.model, "state_dict"):
            from ..models.saving import save

            self._path = str(save(model, Path(folder)))
        else:  # no folder, or not a model slimformer saves (an exported artifact): a copy in memory
            self._model = copy.deepcopy(model)

    @classmethod
    def of(cls, model) -> "Original":
        """An Original that is `model` itself (already a separate object the caller keeps)."""
        o = cls.__new__(cls)
        o.source, o.kind, o._model, o._path, o._fingerprint = model.source, model.kind, model, None, None
        return o

    def __call__(self):
        if self._model is None:
            from ..models.loading import load

            LOG.info("loading the original model from %s", self._path)
            m = load(self._path, kind=self.kind)
            if self._fingerprint is not None and weights_fingerprint(m.model) != self._fingerprint:
                raise SlimformerError(f"the model was changed in memory after it was loaded from {self._path}, and no "
                                      "recorded step says how; run the change as a recipe step (or save the model "
                                      "and compress the saved folder)")
            m.source = self.source
            self._model = m
        return self._model

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def release(self) -> None:
        """Drop the loaded copy (it is reloaded on the next call), unless it is the only copy."""
        if self._path is not None:
            self._model = None


def _reloadable(model) -> bool:
    from ..models.loading import DEFAULT_NAMES

    meta = getattr(model, "meta", None) or {}
    src = str(getattr(model, "source", "") or "")
    if meta.get("steps") or not src or not hasattr(model, "model"):
        return False
    return src in DEFAULT_NAMES or src.startswith("default:") or Path(src).expanduser().exists()


def weights_fingerprint(module) -> str:
    """A hash of every parameter and buffer's name, shape and sum (one pass over the weights)."""
    import torch

    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in module.state_dict().items():
            s = float(t.double().sum())
            h.update(f"{name}{tuple(t.shape)}{s!r}".encode())
    return h.hexdigest()[:16]


@dataclass
class Run:
    """What a step may use. calibration: texts to calibrate on. task: the evaluation task (a
    training step may report its metric on it). train_task: labeled training data (finetune).
    unlabeled: sentences that training steps train on when their config names none. original:
    the model before the recipe (`run.original()`; an Original). work_dir: the run's work folder;
    step_dir: this step's folder in it (a training step keeps its checkpoints there, so a re-run
    resumes); artifact_dir: where export steps write. threads / device: where to compute. logger,
    trackers: where training steps report (accelerate tracker names: tensorboard, mlflow, wandb).
    training_callbacks: callbacks that steps acting during training (trait `wraps_training`) hand to
    the next training step. callbacks: trainer callbacks every training step of the run also gets
    (the planner's check of a candidate at its short rung). cache_dir: a folder shared by runs for
    what does not change between them (a teacher's embeddings of the training texts)."""

    calibration: list = field(default_factory=list)
    task: Any = None
    train_task: Any = None
    unlabeled: list | None = None
    original: Original | None = None
    work_dir: Path | None = None
    step_dir: Path | None = None
    artifact_dir: Path | None = None
    threads: int | None = None
    device: str = "cpu"
    logger: logging.Logger = field(default=LOG)
    trackers: tuple = ()
    training_callbacks: list = field(default_factory=list)
    callbacks: tuple = ()
    cache_dir: Path | None = None

    @classmethod
    def of(cls, data=None) -> "Run":
        """A Run for a step applied outside a recipe: `data` a Run, calibration texts or None."""
        if isinstance(data, Run):
            return data
        return cls(calibration=list(data) if data is not None else [])

    def for_step(self, index: int, method: str) -> "Run":
        """This run as seen by step `index` (1-based): its own folder in the work folder."""
        folder = self.work_dir / f"{index:02d}-{method}" if self.work_dir is not None else None
        return dataclasses.replace(self, step_dir=folder)

    def with_calibration(self, texts) -> "Run":
        return dataclasses.replace(self, calibration=list(texts))

    def artifact_folder(self, name: str) -> Path:
        """A folder for an export step's artifact: `artifact_dir/name`, or a new temporary folder."""
        base = self.artifact_dir if self.artifact_dir is not None else Path(tempfile.mkdtemp(prefix="slimformer-art-"))
        return Path(base) / name

    def take_training_callbacks(self) -> list:
        """The callbacks waiting for the next training step (emptied: each wraps one training step),
        then the run's own callbacks."""
        cbs = list(self.training_callbacks)
        self.training_callbacks.clear()
        return cbs + list(self.callbacks)
