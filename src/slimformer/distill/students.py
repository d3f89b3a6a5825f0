"""Students: from the teacher by keeping chosen layers (DistilBERT-style initialization), or any
pruned / factorized model (they are SlimModels already)."""
from __future__ import annotations

import copy

from ..adapters import get_adapter
from ..core.config import Applied, Traits, register_method
from ..core.errors import ConfigError
from ..models.surgery import remove_layers_
from .configs import ShrinkConfig


def every_other_layer(model) -> list[int]:
    """The default student layers: 0, 2, 4, ... of the model's (single) layer stack."""
    n = len(get_adapter(model.model).layers(model.model))
    return list(range(0, n, 2))


def _check_keep(model, keep):
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
    return keep


@register_method(ShrinkConfig, traits=Traits(changes_shapes=True))
def shrink_step(sm, cfg, run=None) -> Applied:
    """Recipe step `shrink_layers`: keep cfg.keep (default: every other layer) of `sm`, in place."""
    before = len(get_adapter(sm.model).layers(sm.model))
    keep = _check_keep(sm, list(cfg.keep) or every_other_layer(sm))
    remove_layers_(sm.model, keep)
    sm.source = f"{sm.source} (layers {keep})"
    return Applied([f"shrink_layers: kept layers {keep} of {before}"], {"keep": keep, "layers_before": before})


def shrink_layers(model, keep) -> object:
    """A copy of `model` (a SlimModel) keeping only the layers `keep` (indices into its layer stack;
    for encoder-decoders {"encoder": [...], "decoder": [...]}), initialized from those layers. The
    original is untouched; the copy carries the same tokenizer, pooling and task head."""
    keep = _check_keep(model, keep)
    student = copy.deepcopy(model)
    remove_layers_(student.model, keep)
    student.source = f"{model.source} (layers {keep})"
    student.meta = {k: v for k, v in model.meta.items() if k not in ("result", "recipe")}
    student.meta.setdefault("steps", []).append({"method": "shrink_layers", "keep": keep})
    return student


def student_from_config(teacher, **sizes):
    """A fresh (randomly initialized) student of the teacher's architecture with other sizes, e.g.
    `student_from_config(teacher, hidden_size=256, num_hidden_layers=3, num_attention_heads=4,
    intermediate_size=1024)`: same tokenizer, pooling and task. Keys are the model config's own."""
    from ..models.wrapper import SlimModel

    cfg = copy.deepcopy(teacher.model.config)
    for k, v in sizes.items():
        if not hasattr(cfg, k):
            raise ConfigError(f"student_from_config: {type(cfg).__name__} has no {k!r}")
        setattr(cfg, k, v)
    for k in ("slimformer_layer_sizes", "slimformer_quantization"):
        if hasattr(cfg, k):
            delattr(cfg, k)
    try:
        model = type(teacher.model)(cfg)
    except Exception as e:  # transformers validates sizes (hidden % heads, ...)
        raise ConfigError(f"student_from_config: {type(e).__name__}: {e}") from None
    model.eval()
    return SlimModel(model, teacher.tokenizer, teacher.kind, copy.deepcopy(teacher.pooling),
                     source=f"fresh {type(model).__name__} ({', '.join(f'{k}={v}' for k, v in sizes.items())})")
