"""What every format outside slimformer (ONNX LM graphs, GGUF, compressed-tensors) refuses alike."""
from __future__ import annotations

from ..core.errors import ConfigError


def check_portable(sm, fmt: str, instead: str) -> None:
    """One-line ConfigError when `sm` holds what no plain runtime computes: a step whose trait says
    it is not portable (a Hadamard rotation: its run-time transforms live in slimformer's modules) or layers of different sizes
    (structured pruning). `instead`: what the user can quantize with for `fmt`."""
    from ..core.config import METHODS

    for step in (sm.meta or {}).get("steps", []):
        name = str(step.get("method", ""))
        if name in METHODS and not METHODS.get(name).traits.portable:
            raise ConfigError(f"{fmt} cannot hold a model changed by step {name} (its run-time transforms, e.g. the "
                              f"rotations of a Hadamard-rotated model, scheme w4-gptq-rot, are not in {fmt}'s model "
                              f"code); quantize without it ({instead})")
    if getattr(sm.model.config, "slimformer_layer_sizes", None):
        raise ConfigError(f"{fmt} cannot hold a model whose layers differ in size (structured pruning): it builds "
                          "every layer alike")
