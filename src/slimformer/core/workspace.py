"""Where a recipe step keeps its working state, and the training texts a run was given.

`compress` gives each step a folder of its own inside a work folder beside `--out`
(`.NAME.slimformer-work`), kept until the run has written its output: a step that trains keeps its
checkpoints there, so re-running the same command after an interruption resumes it. Outside
`compress` there is no step folder (steps that train then keep no checkpoints)."""
from __future__ import annotations

import contextlib
import contextvars
from pathlib import Path

STEP_DIR: contextvars.ContextVar[Path | None] = contextvars.ContextVar("slimformer_step_dir", default=None)
TRAINING_TEXTS: contextvars.ContextVar[list | None] = contextvars.ContextVar("slimformer_training_texts",
                                                                             default=None)


@contextlib.contextmanager
def step_dir(folder: Path | None):
    token = STEP_DIR.set(Path(folder) if folder is not None else None)
    try:
        yield
    finally:
        STEP_DIR.reset(token)


@contextlib.contextmanager
def training_texts(texts: list | None):
    """The unlabeled texts steps that train use when their config names none (compress --unlabeled)."""
    token = TRAINING_TEXTS.set(texts)
    try:
        yield
    finally:
        TRAINING_TEXTS.reset(token)
