"""Students: from the teacher by keeping chosen layers (DistilBERT-style initialization), or any
pruned / factorized model (they are SlimModels already)."""
from __future__ import annotations

import copy

from ..adapters import get_adapter
from ..core.errors import ConfigError
from ..models.surgery import remove_layers_


def shrink_layers(model, keep) -> object:
    """A copy of `model` (a SlimModel) keeping only the layers `keep` (indices into its layer stack;
    for encoder-decoders {"encoder": [...], "decoder": [...]}), initialized from those layers. The
    original is untouched; the copy carries the same tokenizer, pooling and task head."""
    stacks = get_adapter(model.model).layer_containers(model.model)
    if not isinstance(keep, dict):
        keep = list(keep)
        if len(stacks) == 1:
            n = len(next(iter(stacks.values())))
            bad = [k for k in keep if not isinstance(k, int) or not 0 <= k < n]
            if bad:
                raise ConfigError(f"shrink_layers: layers {bad} out of range; accepted: 0..{n - 1}")
            if len(set(keep)) != len(keep):
                raise ConfigError(f"shrink_layers: layer list {keep} repeats a layer")
    student = copy.deepcopy(model)
    remove_layers_(student.model, keep)
    student.source = f"{model.source} (layers {keep})"
    student.meta = {k: v for k, v in model.meta.items() if k not in ("result", "recipe")}
    student.meta.setdefault("steps", []).append({"method": "shrink_layers", "keep": keep})
    return student
