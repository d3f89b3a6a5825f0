"""The ONNX export as a recipe step (`- method: onnx`), so a recipe can end in the deployable
artifact and `compress` measures what the user will run."""
from __future__ import annotations

from dataclasses import dataclass

from ..core.config import Applied, MethodConfig, Traits, register_method
from ..core.errors import ConfigError


@dataclass(frozen=True)
class ExportConfig(MethodConfig):
    """Export to an ONNX folder run by ONNX Runtime (CPU); the last step of a recipe.

    quantize: "none" (float32), "int8" (SmoothQuant-equalized dynamic int8 tuned for ONNX Runtime
    on CPU, weights per channel, 4-bit token-embedding table), "int8-static" (QDQ graph with
    activation ranges calibrated on the step's data) or "int8-weights" (int8 weights, activations
    quantized at run time by OpenVINO; see export_onnx). optimize: "auto" (default: build the graph
    with and without ONNX Runtime's transformer optimizer and keep the one that runs faster on this
    machine; MiniLM int8: the optimizer's graph was ~3% faster on an AVX2 CPU, ~12% slower on an
    AVX-512 VNNI / AMX Xeon), true or false. embedding_bits: 4 (block-quantized table, ONNX Runtime only) or 8.
    smooth_alpha: SmoothQuant strength (0..1) for int8, or None to turn it off. static_observer:
    int8-static activation ranges ("minmax", "percentile", "mse"). calibration_samples: texts the
    activation statistics come from. Every finer option of the export stays available through
    `slimformer.export.export_onnx(**options)` (EXPORT_OPTIONS)."""

    method = "onnx"
    quantize: str = "int8"
    optimize: bool | str = "auto"
    embedding_bits: int = 4
    smooth_alpha: float | None = 0.8
    static_observer: str = "minmax"
    calibration_samples: int = 128

    def validate(self) -> None:
        from .onnx import QUANTIZE_MODES, STATIC_OBSERVERS

        self._check_choice("quantize", ("none",) + tuple(QUANTIZE_MODES))
        if self.optimize not in (True, False, "auto"):
            raise ConfigError(f"ExportConfig.optimize={self.optimize!r}; accepted: true, false, auto")
        self._check_choice("embedding_bits", (4, 8))
        if self.smooth_alpha is not None:
            self._check_range("smooth_alpha", 0.0, 1.0)
        self._check_choice("static_observer", tuple(STATIC_OBSERVERS))
        self._check_range("calibration_samples", 1, 100000)
        if self.targets or self.ignore:
            raise ConfigError("ExportConfig: targets/ignore do not apply to an export (it exports the whole model)")

    def options(self) -> dict:
        """export_onnx keyword arguments."""
        return {"quantize": None if self.quantize == "none" else self.quantize, "optimize": self.optimize,
                "embedding_bits": self.embedding_bits, "smooth_alpha": self.smooth_alpha,
                "static_observer": self.static_observer, "calibration_samples": self.calibration_samples}


@register_method(ExportConfig, traits=Traits(artifact=True, needs_calibration=True))
def onnx_step(sm, cfg: ExportConfig, run, name: str = "onnx") -> Applied:
    """Export `sm` (calibrating on the run's texts for int8) into the run's artifact folder (its
    `name` subfolder) and return the loaded artifact as the model."""
    from .onnx import export_onnx
    from .runtime import OnnxSlimModel, load_onnx

    if isinstance(sm, OnnxSlimModel):
        raise ConfigError("onnx: the model is an ONNX export already; an export step must come last in a recipe")
    o = cfg.options()
    data = run.calibration
    folder = export_onnx(sm, run.artifact_folder(name), quantize=o.pop("quantize"), optimize=o.pop("optimize"),
                         calibration_texts=list(data) if data else None, **o)
    art = load_onnx(folder)
    art.meta.setdefault("source_meta", {k: v for k, v in sm.meta.items() if k in ("steps", "recipe")})
    warnings = []
    for st in art.meta.get("steps", []):
        if st.get("step") == "embedding_4bit" and not st.get("applied", True):
            warnings.append(f"onnx: token-embedding table kept 8-bit ({st.get('why')})")
    details = {"folder": str(folder), "quantize": cfg.quantize,
               "graph_steps": [st.get("step") for st in art.meta.get("steps", [])]}
    return Applied(warnings, details, model=art)
