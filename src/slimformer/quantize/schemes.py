"""Named schemes for `slimformer quantize --scheme` and MixedPrecisionConfig.scheme. A scheme is a
built-in recipe (recipes/builtin/*.yaml, the one source of the steps): its steps are float
re-parametrisations (rotate, awq, smoothquant) first, the quantizer last."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..core.config import MethodConfig
from ..core.errors import ConfigError

# scheme name -> the built-in recipe that holds its steps
SCHEME_RECIPES = {
    "int8": "int8-dynamic",          # W8A8 dynamic int8 in PyTorch
    "int8-static": "int8-static",
    "w8": "int8-weight-only",
    "w4": "int4-rtn",
    "w4-awq": "int4-awq",            # round-to-nearest after activation-aware scaling: data, no GPTQ pass
    "w4-gptq": "int4-gptq",
    "w4-gptq-rot": "int4-gptq-rot",  # GPTQ on a Hadamard-rotated model + coordinate descent (Llama family)
    "w4-gptq-g64": "int4-gptq-g64",
    "w4-gptq-g32": "int4-gptq-g32",
    "w4-g32-fz": "int4-g32-fz",      # group 32, float zero points: re-packs a Q4_1 GGUF model exactly
    "w4-g32-sym": "int4-g32-sym",    # symmetric group 32: GGUF Q4_0, loads in transformers via compressed-tensors
}


class _Schemes(Mapping):
    """scheme name -> its steps (a tuple of configs), read from the built-in recipe."""

    def __getitem__(self, name: str) -> tuple[MethodConfig, ...]:
        from ..recipes.recipe import load_recipe

        return tuple(load_recipe(SCHEME_RECIPES[name]).steps)

    def __iter__(self):
        return iter(SCHEME_RECIPES)

    def __len__(self) -> int:
        return len(SCHEME_RECIPES)


SCHEMES: Mapping[str, tuple[MethodConfig, ...]] = _Schemes()


def scheme_steps(name: str) -> list[MethodConfig]:
    """The steps of a named scheme; a ConfigError lists the names accepted."""
    if name not in SCHEME_RECIPES:
        raise ConfigError(f"unknown scheme {name!r}; accepted: {', '.join(SCHEME_RECIPES)}")
    return list(SCHEMES[name])


def final_config(name: str) -> MethodConfig:
    """The quantizer of a scheme (its last step)."""
    return scheme_steps(name)[-1]


def quantize_steps(scheme: str, smoothquant: float | None = None, max_drop: float | None = None,
                   fallback: str = "float", max_kept: int = 16, search_texts: int | None = None) -> list[MethodConfig]:
    """The steps `slimformer quantize` runs: [SmoothQuant], then the scheme's steps, or a
    mixed-precision search over the scheme when max_drop is given."""
    from .configs import SmoothQuantConfig

    steps: list[MethodConfig] = [SmoothQuantConfig(alpha=smoothquant)] if smoothquant is not None else []
    scheme_steps(scheme)  # validates the name
    if max_drop is None:
        if fallback != "float" or max_kept != 16 or search_texts is not None:
            raise ConfigError("--fallback, --max-kept and --search-texts only apply with --max-drop")
        return steps + scheme_steps(scheme)
    return steps + [MixedPrecisionConfig(scheme=scheme, max_drop=max_drop, fallback=fallback, max_float=max_kept,
                                         calibration_texts=search_texts)]


@dataclass(frozen=True)
class MixedPrecisionConfig(MethodConfig):
    """Quantize with `scheme` (a name from `slimformer.quantize.SCHEMES`, e.g. "int8"; a scheme's
    float steps, rotation or AWQ scaling, run once before the search) but keep
    the most sensitive Linear layers float until the quality budget holds.

    Sensitivity of a layer = the fidelity drop when only that layer is quantized, measured on
    the calibration texts against the float model: 1 - cosine of sentence embeddings for
    embedding models, KL(float || quantized) of the output distribution for LMs and
    classifiers. Layers are kept float from the most sensitive down until the whole model's
    drop is <= max_drop, or max_float layers are kept.

    fallback "int8" (4-bit weight-only schemes): kept layers go to 8 bits instead of float
    (WeightOnlyConfig.int8_targets), a mixed int4/int8 model. fallback "int4-g32": kept layers stay
    4-bit on a finer grid, group 32 with float zero points (WeightOnlyConfig.fine_targets), a model
    that is all int4 with per-layer group sizes. For GPTQ schemes, sensitivities
    and the budget loop use round-to-nearest at the same bits and group size (GPTQ for every
    candidate set would take minutes each); the final model is GPTQ, and its own drop is reported.

    calibration_texts: texts the search measures on (the first ones of the data). Default: 64;
    for decoder LMs 8, joined and cut into chunks of 128 tokens (at most 8 chunks): the KL over
    about a thousand tokens x the vocabulary is a rich signal, and every probe runs the whole LM
    (SmolLM2-135M: about 1.3 s a layer, 5 minutes for its 210 layers; 64 took 8x that)."""

    method = "mixed_precision"
    scheme: str = "int8"
    max_drop: float = 0.002
    max_float: int = 16
    fallback: str = "float"
    calibration_texts: int | None = None  # None: 64 texts, or for decoder LMs 8 (see above)

    def validate(self) -> None:
        self._check_choice("scheme", tuple(SCHEME_RECIPES))
        self._check_choice("fallback", ("float", "int8", "int4-g32"))
        if self.fallback != "float":
            s = final_config(self.scheme)
            if getattr(s, "method", None) != "weight_only" or s.bits != 4:
                four = [k for k in SCHEMES if final_config(k).method == "weight_only" and final_config(k).bits == 4]
                raise ConfigError(f"MixedPrecisionConfig.fallback={self.fallback!r} keeps sensitive layers on a finer "
                                  f"grid inside a 4-bit weight-only model; scheme={self.scheme!r} is not one. Accepted: "
                                  f"{', '.join(four)}")
            if self.fallback == "int4-g32" and s.group_size != -1 and s.group_size <= 32:
                coarse = [k for k in SCHEMES if final_config(k).method == "weight_only" and final_config(k).bits == 4
                          and (final_config(k).group_size == -1 or final_config(k).group_size > 32)]
                raise ConfigError(f"MixedPrecisionConfig.fallback='int4-g32' moves layers to group 32; scheme="
                                  f"{self.scheme!r} already has group {s.group_size}. Accepted: {', '.join(coarse)}")
        self._check_range("max_drop", 0.0, 10.0)
        self._check_range("max_float", 0, 100000)
        if self.calibration_texts is not None:
            self._check_range("calibration_texts", 1, 100000)
