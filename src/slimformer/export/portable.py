"""What every format outside slimformer (ONNX LM graphs, GGUF, compressed-tensors) refuses alike."""
from __future__ import annotations

from ..core.errors import ConfigError


def check_portable(sm, fmt: str, instead: str) -> None:
    """One-line ConfigError when `sm` holds what no plain runtime computes: a Hadamard rotation
    (its run-time transforms live in slimformer's modules) or layers of different sizes
    (structured pruning). `instead`: what the user can quantize with for `fmt`."""
    if "rotate" in [s.get("method") for s in (sm.meta or {}).get("steps", [])]:
        raise ConfigError(f"{fmt} cannot hold a Hadamard-rotated model (step rotate, scheme w4-gptq-rot): its "
                          f"run-time rotations are not in {fmt}'s model code; quantize without rotate ({instead})")
    if getattr(sm.model.config, "slimformer_layer_sizes", None):
        raise ConfigError(f"{fmt} cannot hold a model whose layers differ in size (structured pruning): it builds "
                          "every layer alike")
