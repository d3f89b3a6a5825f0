"""How a recipe's steps run: one loop for every command, benchmark and planner trial.

Each step's handler gets the model, its config and the Run (`handler(model, cfg, run)`); what the
pipeline needs to know about a step it reads from the traits the method was registered with, never
from its name: an `artifact` step must be last, a `wraps_training` step needs a step that `trains`
after it, a step that `trains` keeps its checkpoints in its own folder of the run's work folder."""
from __future__ import annotations

import sys
import time

from ..core.config import apply_method, traits_of
from ..core.errors import ConfigError
from ..core.run import Run
from ..evaluate.efficiency import saved_bytes
from .result import StepRecord


def check_recipe(recipe, model=None) -> None:
    """An artifact step (export) only last; a step acting during training before a training step;
    with `model`, each method's own check of the model (before any step runs)."""
    from ..core.config import METHODS

    steps = recipe.steps
    if model is not None:
        for i, cfg in enumerate(steps, 1):
            check = METHODS.get(cfg.method).check
            if check is not None:
                try:
                    check(model, cfg)
                except ConfigError as e:
                    raise ConfigError(f"recipe {recipe.name!r} step {i} ({cfg.method}): {e}") from None
    for i, cfg in enumerate(steps, 1):
        t = traits_of(cfg)
        if t.artifact and i < len(steps):
            raise ConfigError(f"recipe {recipe.name!r}: step {i} ({cfg.method}) writes a deployable artifact and must "
                              f"be the last step; {len(steps) - i} step(s) follow it")
        if t.wraps_training and not any(traits_of(c).trains for c in steps[i:]):
            trainers = [n for n in METHODS.names() if traits_of(n).trains]
            raise ConfigError(f"recipe {recipe.name!r}: step {i} ({cfg.method}) acts during training and needs a step "
                              f"that trains after it ({', '.join(trainers)})")


def last_training_step(recipe) -> int | None:
    """Index (0-based) of the last step that trains, or None."""
    idx = [i for i, c in enumerate(recipe.steps) if traits_of(c).trains]
    return idx[-1] if idx else None


def run_steps(model, recipe, run=None, after_step=None, progress: bool = False):
    """Apply each step of `recipe` in place: (StepRecords, what the recipe ends with: `model`
    itself, or the artifact of a final export step). run: a Run (or calibration texts);
    after_step(i, current): called after each step but the last."""
    run = Run.of(run)
    check_recipe(recipe, model)
    records = []
    current = model
    for i, cfg in enumerate(recipe.steps, 1):
        if progress and len(recipe.steps) > 1:
            print(f"[{i}/{len(recipe.steps)}] {cfg.method}", file=sys.stderr, flush=True)
        run.logger.info("step %d/%d: %s", i, len(recipe.steps), cfg.method)
        before = saved_bytes(current)["bytes"], current.num_params()
        t0 = time.perf_counter()
        out = apply_method(current, cfg, run.for_step(i, cfg.method))
        secs = time.perf_counter() - t0
        if out.model is not None:
            current = out.model
        if getattr(current, "stream", None) is not None:
            current.stream.finish()  # a streamed step: what it did not touch is copied over
        after = saved_bytes(current)["bytes"], current.num_params()
        records.append(StepRecord(cfg.method, cfg.to_dict(), before[1], after[1], before[0], after[0],
                                  round(secs, 3), list(out.warnings), dict(out.details), traits_of(cfg).names()))
        if after_step is not None and i < len(recipe.steps):
            after_step(i, current)
    if run.training_callbacks:
        raise ConfigError("a step acting during training found no training step after it")
    return records, current
