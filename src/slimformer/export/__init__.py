"""Export to ONNX (optionally int8) and run the exported folder with ONNX Runtime.

    from slimformer.export import export_onnx, load_onnx
    folder = export_onnx(model, "out/minilm-onnx", quantize="int8")
    onnx_model = load_onnx(folder)           # quacks like SlimModel: embed(), tokenize(), model(**enc)

Needs the `onnx` extra: pip install 'slimformer[onnx]'.
"""
from __future__ import annotations

from .onnx import EXPORT_OPTIONS, ONNX_META_FILE, export_onnx
from .runtime import OnnxSlimModel, load_onnx

__all__ = ["export_onnx", "load_onnx", "OnnxSlimModel", "EXPORT_OPTIONS", "ONNX_META_FILE"]
