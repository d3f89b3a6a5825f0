"""The other export formats as recipe steps, so `slimformer export` is a recipe run like every
command: `onnx_lm` (a KV-cache ONNX Runtime graph of a Llama-family LM), `gguf` (one .gguf for
llama.cpp) and `compressed_tensors` (a folder plain transformers and vLLM load)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.config import Applied, MethodConfig, Traits, register_method
from ..core.errors import ConfigError


class ExportedFiles:
    """An artifact slimformer wrote but does not run itself (a .gguf file, a compressed-tensors
    folder): its path, the sizes `compress` records, and `load()` for evaluating it (slimformer's
    own loaders: a .gguf dequantized to float, a compressed-tensors folder through transformers)."""

    def __init__(self, path: Path, fmt: str, sm):
        self.path = Path(path)
        self.format = fmt
        self.kind = sm.kind
        self.source = f"{sm.source} ({fmt})"
        self.meta = {"format": fmt, "source_meta": {k: v for k, v in sm.meta.items() if k in ("steps", "recipe")}}
        self._params = sm.num_params()

    @property
    def folder(self) -> Path | None:
        """The artifact's folder (None for a single file)."""
        return self.path if self.path.is_dir() else None

    def disk_bytes(self) -> dict:
        files = [self.path] if self.path.is_file() else [f for f in self.path.rglob("*") if f.is_file()]
        weights = sum(f.stat().st_size for f in files if f.suffix in (".gguf", ".safetensors"))
        return {"bytes": weights, "bytes_total": sum(f.stat().st_size for f in files)}

    def num_params(self) -> int:
        return self._params

    def load(self):
        from ..models.loading import load

        return load(self.path)


def _refuse_targets(cfg) -> None:
    if cfg.targets or cfg.ignore:
        raise ConfigError(f"{type(cfg).__name__}: targets/ignore do not apply to an export (it writes the whole model)")


@dataclass(frozen=True)
class OnnxLMConfig(MethodConfig):
    """A Llama-family causal LM as one ONNX Runtime graph with a KV cache (export_onnx_lm):
    int4/int8 weights as MatMulNBits with slimformer's codes. accuracy_level: MatMulNBits' level,
    4 (int8 activations per block, fastest) down to 0 (float activations, exact)."""

    method = "onnx_lm"
    accuracy_level: int = 4

    def validate(self) -> None:
        self._check_choice("accuracy_level", (0, 1, 2, 3, 4))
        _refuse_targets(self)


@dataclass(frozen=True)
class GgufConfig(MethodConfig):
    """A Llama-architecture LM as one .gguf file for llama.cpp (export_gguf: Q4_1 / Q4_0 / Q8_0
    blocks holding slimformer's codes, F32 otherwise)."""

    method = "gguf"

    def validate(self) -> None:
        _refuse_targets(self)


@dataclass(frozen=True)
class CompressedTensorsConfig(MethodConfig):
    """A model quantized by slimformer in the compressed-tensors format (export_compressed_tensors),
    codes and scales carried over exactly; transformers' from_pretrained and vLLM load it."""

    method = "compressed_tensors"

    def validate(self) -> None:
        _refuse_targets(self)


@dataclass(frozen=True)
class ExecuTorchConfig(MethodConfig):
    """One .pte file for ExecuTorch's XNNPACK backend (export_executorch): an encoder, or a
    Llama-family LM with its KV cache. quantize: "none", "int8" (int8 dynamic activations x int8
    weights per channel) or "int4" (4-bit weights in groups of `group_size`, int8 dynamic
    activations), torchao's quantizers as ExecuTorch documents them; the token-embedding table
    weight-only at `embedding_bits` (4: groups of 32; 8: per row). batch_size: the program's fixed
    batch (1: a phone runs one input at a time). max_seq_len: the longest input (encoders; default
    the model's pooling length) or the KV cache's length (LMs; default 1024)."""

    method = "executorch"
    quantize: str = "none"
    batch_size: int = 1
    max_seq_len: int | None = None
    group_size: int = 32
    embedding_bits: int = 4

    def validate(self) -> None:
        from .executorch import PTE_QUANTIZE

        self._check_choice("quantize", ("none",) + PTE_QUANTIZE)
        self._check_range("batch_size", 1, 1024)
        if self.max_seq_len is not None:
            self._check_range("max_seq_len", 2, 32768)
        self._check_choice("group_size", (32, 64, 128, 256))
        self._check_choice("embedding_bits", (4, 8))
        _refuse_targets(self)


def _not_exported(sm, step: str) -> None:
    from .executorch import ExecuTorchSlimModel
    from .runtime import OnnxSlimModel

    if isinstance(sm, (OnnxSlimModel, ExportedFiles, ExecuTorchSlimModel)):
        raise ConfigError(f"{step}: the model is an export already; an export step must come last in a recipe")


@register_method(OnnxLMConfig, traits=Traits(artifact=True))
def onnx_lm_step(sm, cfg: OnnxLMConfig, run) -> Applied:
    from .onnx_lm import export_onnx_lm
    from .runtime import load_onnx

    _not_exported(sm, "onnx_lm")
    folder = export_onnx_lm(sm, run.artifact_folder("onnx-lm"), accuracy_level=cfg.accuracy_level)
    art = load_onnx(folder)
    art.meta.setdefault("source_meta", {k: v for k, v in sm.meta.items() if k in ("steps", "recipe")})
    return Applied([f"onnx_lm: KV-cache graph, MatMulNBits accuracy level {cfg.accuracy_level}"],
                   {"folder": str(folder), "accuracy_level": cfg.accuracy_level}, model=art)


@register_method(GgufConfig, traits=Traits(artifact=True))
def gguf_step(sm, cfg: GgufConfig, run) -> Applied:
    from .gguf import export_gguf, tensor_types

    _not_exported(sm, "gguf")
    folder = run.artifact_folder("gguf")
    folder.mkdir(parents=True, exist_ok=True)
    path = export_gguf(sm, folder / "model.gguf")
    types = tensor_types(path)
    return Applied([f"gguf: {path.stat().st_size / 1e6:.1f} MB, tensor types {', '.join(types)}"],
                   {"file": str(path), "tensor_types": list(types)}, model=ExportedFiles(path, "gguf", sm))


@register_method(CompressedTensorsConfig, traits=Traits(artifact=True))
def compressed_tensors_step(sm, cfg: CompressedTensorsConfig, run) -> Applied:
    from .compressed_tensors import export_compressed_tensors

    _not_exported(sm, "compressed_tensors")
    folder = export_compressed_tensors(sm, run.artifact_folder("compressed-tensors"))
    return Applied(["compressed_tensors: load it with transformers' from_pretrained (pip install compressed-tensors)"],
                   {"folder": str(folder)}, model=ExportedFiles(folder, "compressed-tensors", sm))


@register_method(ExecuTorchConfig, traits=Traits(artifact=True))
def executorch_step(sm, cfg: ExecuTorchConfig, run) -> Applied:
    from .executorch import export_executorch, load_executorch

    _not_exported(sm, "executorch")
    path = export_executorch(sm, run.artifact_folder("executorch") / "model.pte",
                             quantize=None if cfg.quantize == "none" else cfg.quantize, batch_size=cfg.batch_size,
                             max_seq_len=cfg.max_seq_len, group_size=cfg.group_size, embedding_bits=cfg.embedding_bits)
    art = load_executorch(path)
    outside = art.meta.get("ops_outside_xnnpack", [])
    return Applied([f"executorch: {path.stat().st_size / 1e6:.1f} MB, {art.meta.get('xnnpack_partitions')} XNNPACK "
                    f"partitions" + (f"; run by ExecuTorch's portable kernels: {', '.join(outside)}" if outside else "")],
                   {"file": str(path), "quantize": cfg.quantize, "xnnpack_partitions": art.meta.get("xnnpack_partitions"),
                    "ops_outside_xnnpack": outside}, model=art)


def export_step(sm, fmt: str, quantize: str | None = None, optimize="auto", accuracy_level: int = 4) -> MethodConfig:
    """The export step `slimformer export` runs: fmt "gguf", "compressed-tensors", "executorch"
    (`quantize` none / int8 / int4) or "onnx"; for
    ONNX, a Llama-family LM without `quantize` becomes one KV-cache graph (onnx_lm), anything else
    the encoder-style export (onnx, `quantize` none / int8 / int8-static / int8-weights)."""
    from .onnx_lm import lm_graph_supported
    from .step import ExportConfig

    if fmt == "executorch":
        from .executorch import PTE_QUANTIZE

        if quantize not in (None,) + PTE_QUANTIZE:
            raise ConfigError(f"--executorch --quantize {quantize}: accepted: {', '.join(PTE_QUANTIZE)} (or none: float32)")
        return ExecuTorchConfig(quantize=quantize or "none")
    if fmt != "onnx" and (quantize or optimize is False):
        raise ConfigError("--quantize / --no-optimize apply to --onnx and --executorch; --gguf and --compressed-tensors "
                          "write the model as quantized (run slimformer quantize first)")
    if fmt == "gguf":
        return GgufConfig()
    if fmt == "compressed-tensors":
        return CompressedTensorsConfig()
    if not quantize and getattr(sm, "kind", None) == "causal-lm" and lm_graph_supported(sm):
        return OnnxLMConfig(accuracy_level=accuracy_level)
    return ExportConfig(quantize=quantize or "none", optimize=optimize)


def gguf_written_by_slimformer(path: Path) -> bool:
    """Whether the file at `path` is a .gguf slimformer wrote (the only kind it overwrites)."""
    import gguf

    from .gguf import MARK

    try:
        return MARK in gguf.GGUFReader(str(path)).fields
    except Exception:  # not a GGUF file at all
        return False
