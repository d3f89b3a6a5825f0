"""The `deploy` step: build the deployable the way this machine runs fastest.

Candidates: "onnx-int8" (the int8 ONNX Runtime export of the `onnx` step), "openvino-int8" (the
`int8-weights` export run by OpenVINO: int8 weights, activations quantized at run time, bf16
elsewhere where the CPU has it; a candidate only where `openvino` is installed),
"openvino-int8-static" (NNCF's static int8, quantize="int8-nncf", run by OpenVINO; where `nncf`
and `openvino` are installed) and "bf16" (the
PyTorch model cast to bfloat16; a candidate only where the CPU runs bf16 natively: AMX-BF16 or
AVX512-BF16). Each is timed on this machine (batch 32 x 128 of the step's texts, interleaved,
medians) and the fastest is what the recipe ends with; the details keep every timing and the
CPU flags, so the report says why. With none of the optional ones, the step is the int8 export."""
from __future__ import annotations

import copy
from dataclasses import dataclass

from ..core.config import Applied, MethodConfig, Traits, register_method
from ..core.errors import ConfigError
from ..core.hardware import cpu_info, fast_bf16

CANDIDATES = ("onnx-int8", "openvino-int8", "openvino-int8-static", "bf16")


@dataclass(frozen=True)
class DeployConfig(MethodConfig):
    """The last step of a recipe: the fastest of `candidates` on this machine (see the module
    docstring). repeats: timed calls per candidate (after one warm-up each)."""

    method = "deploy"
    candidates: tuple[str, ...] = CANDIDATES
    repeats: int = 4

    def validate(self) -> None:
        bad = [c for c in self.candidates if c not in CANDIDATES]
        if bad or not self.candidates:
            raise ConfigError(f"DeployConfig.candidates={list(self.candidates)!r}; accepted: a non-empty list of "
                              f"{', '.join(CANDIDATES)}")
        self._check_range("repeats", 1, 100)
        if self.targets or self.ignore:
            raise ConfigError("DeployConfig: targets/ignore do not apply (it deploys the whole model)")


def _throughput(models: dict, enc: dict, repeats: int) -> dict:
    from ..evaluate.efficiency import interleaved_seconds

    secs = interleaved_seconds(models, enc, repeats, pause=0.1)
    return {k: enc["input_ids"].shape[0] / v for k, v in secs.items()}


@register_method(DeployConfig, traits=Traits(artifact=True, needs_calibration=True))
def deploy_step(sm, cfg: DeployConfig, run) -> Applied:
    from ..data import sample_sentences
    from ..evaluate.efficiency import make_inputs
    from ..quantize.cast import cast
    from ..quantize.configs import CastConfig
    from .runtime import OnnxSlimModel, openvino_available
    from .step import ExportConfig, onnx_step

    if isinstance(sm, OnnxSlimModel):
        raise ConfigError("deploy: the model is an ONNX export already; deploy must be the last step of a recipe")
    device = next(sm.model.parameters()).device.type
    built, notes = {}, []
    if "onnx-int8" in cfg.candidates:
        built["onnx-int8"] = onnx_step(sm, ExportConfig(quantize="int8"), run).model
    if "openvino-int8" in cfg.candidates:
        if device == "cpu" and openvino_available():
            built["openvino-int8"] = onnx_step(sm, ExportConfig(quantize="int8-weights"), run, name="openvino").model
        else:
            notes.append("openvino-int8 not tried: " + ("the model is on " + device if device != "cpu" else
                                                        "openvino is not installed (pip install 'slimformer[openvino]')"))
    if "openvino-int8-static" in cfg.candidates:
        from .openvino import nncf_available

        if device == "cpu" and nncf_available():
            built["openvino-int8-static"] = onnx_step(sm, ExportConfig(quantize="int8-nncf"), run, name="nncf").model
        else:
            notes.append("openvino-int8-static not tried: " + ("the model is on " + device if device != "cpu" else
                                                               "nncf / openvino are not installed (pip install "
                                                               "'slimformer[openvino]')"))
    if "bf16" in cfg.candidates:
        if fast_bf16(device):
            m = copy.deepcopy(sm)
            cast(m, CastConfig(dtype="bf16"))
            built["bf16"] = m
        else:
            notes.append("bf16 not tried: no native bf16 on this CPU (AMX-BF16 / AVX512-BF16)")
    if not built:
        raise ConfigError("deploy: no candidate can run on this machine (" + "; ".join(notes) + "); add onnx-int8")
    if len(built) == 1:
        name = next(iter(built))
        speed = {}
    else:
        enc = make_inputs(sm, list(run.calibration) or sample_sentences(), 32, 128)
        enc.pop("token_type_ids", None)
        speed = _throughput(built, enc, cfg.repeats)
        name = max(speed, key=speed.get)
    details = {"picked": name, "throughput": speed, "cpu_flags": cpu_info().get("cpu_flags", []),
               "candidates": list(cfg.candidates)}
    said = ", ".join(f"{k} {v:.1f}/s" for k, v in speed.items())
    msg = [f"deploy: {name}" + (f" (faster here: {said} at batch 32 x 128)" if speed else "")] + notes
    if name == "bf16":  # the PyTorch model itself, in bf16
        cast(sm, CastConfig(dtype="bf16"))
        return Applied(msg, details)
    return Applied(msg, details, model=built[name])
