"""Export to ONNX (optionally int8) and run the exported folder with ONNX Runtime.

    from slimformer.export import export_onnx, load_onnx
    folder = export_onnx(model, "out/minilm-onnx", quantize="int8")
    onnx_model = load_onnx(folder)           # quacks like SlimModel: embed(), tokenize(), model(**enc)

Needs the `onnx` extra: pip install 'slimformer[onnx]'.
"""
from __future__ import annotations

from ..models.loading import FILE_LOADERS, FOLDER_LOADERS
from .compressed_tensors import export_compressed_tensors
from .gguf import export_gguf
from .onnx_lm import export_onnx_lm
from .onnx import EXPORT_OPTIONS, ONNX_META_FILE, export_onnx
from .runtime import OnnxSlimModel, _load_folder, load_onnx
from .deploy import DeployConfig, deploy_step
from .step import ExportConfig, onnx_step
from .formats import CompressedTensorsConfig, ExecuTorchConfig, ExportedFiles, GgufConfig, OnnxLMConfig
from .executorch import ExecuTorchSlimModel, export_executorch, load_executorch
from .executorch import _load_file as _load_pte

FOLDER_LOADERS[ONNX_META_FILE] = _load_folder  # slimformer.load(DIR) opens an exported folder
FILE_LOADERS[".pte"] = _load_pte  # slimformer.load(FILE.pte) runs it with ExecuTorch

__all__ = ["export_onnx", "export_compressed_tensors", "export_gguf", "export_onnx_lm", "load_onnx", "OnnxSlimModel", "EXPORT_OPTIONS", "ONNX_META_FILE", "ExportConfig", "DeployConfig",
           "OnnxLMConfig", "GgufConfig", "CompressedTensorsConfig", "ExportedFiles", "ExecuTorchConfig",
           "ExecuTorchSlimModel", "export_executorch", "load_executorch"]
