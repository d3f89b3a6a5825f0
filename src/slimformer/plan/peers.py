"""The obvious alternatives, measured in the plan's run beside its trials and drawn on its front:
the untouched model, ONNX Runtime's quantize_dynamic of the plain graph (what optimum writes for
int8 on CPU), and for sentence encoders a model2vec static embedding distilled from the model.
OpenVINO int8 through NNCF and `model.to(bfloat16)` are among the plan's first trials (the
`openvino-int8-static` and `bf16` runtimes on the untouched model) and are marked as peers there."""
from __future__ import annotations

import importlib.util
import shutil
import time
from pathlib import Path

import torch

from .trial import PlanSpec, Worker

PEER_RUNTIMES = {"openvino-int8-static": "OpenVINO int8 (NNCF quantize, static activations)",
                 "bf16": "PyTorch bf16 (model.to(torch.bfloat16))"}


def measure_peers(spec: PlanSpec, folder: Path, log) -> list[dict]:
    w = Worker(spec)
    folder.mkdir(parents=True, exist_ok=True)
    base = {k: v for k, v in spec.baseline.items() if k.startswith(("search_", "confirm_"))}  # measured already
    out = [{"label": "original (fp32 PyTorch)", **base, "throughput_x": 1.0, "latency_x": 1.0, "bytes_x": 1.0,
            "memory_x": 1.0, "bytes": spec.baseline["bytes"], "peak_memory_mb": spec.baseline["peak_memory_mb"]}]
    if w.original.kind != "causal-lm":
        got = _ort_dynamic(w, folder)
        if got is not None:
            out.append(got)
    if w.original.kind == "embedding":
        got = _model2vec(w, spec, folder, log)
        if got is not None:
            out.append(got)
    for p in out:
        log(f"peer: {p['label']}: {_said(spec, p)}")
    shutil.rmtree(folder, ignore_errors=True)
    return out


def _said(spec, p: dict) -> str:
    if "error" in p:
        return p["error"]
    m = spec.budget_obj.metric(spec.task_kind)
    return (f"{m} {p[f'search_{m}']:.2f} (search) / {p[f'confirm_{m}']:.2f}, throughput {p['throughput_x']:.2f}x, "
            f"bytes {p['bytes_x']:.1%}")


def _figures(w: Worker, sm) -> dict:
    t0 = time.perf_counter()
    fig = w.measure(sm)
    fig["seconds"] = time.perf_counter() - t0
    return fig


def _ort_dynamic(w: Worker, folder: Path) -> dict | None:
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from ..export import export_onnx
    from ..export.runtime import load_onnx

    label = "ONNX Runtime quantize_dynamic (per channel, as optimum writes it)"
    try:
        plain = export_onnx(w.original, folder / "fp32", optimize=False)
        q = folder / "ort-int8"
        shutil.copytree(plain, q)
        quantize_dynamic(str(plain / "model.onnx"), str(q / "model.onnx"), per_channel=True,
                         weight_type=QuantType.QInt8)
        return {"label": label, **_figures(w, load_onnx(q, threads=w.spec.threads, spin=False))}
    except Exception as e:  # a peer that fails is reported, not fatal
        return {"label": label, "error": f"{type(e).__name__}: {str(e)[:200]}"}


class StaticEmbedding:
    """A model2vec StaticModel behind the SlimModel interface the measurements use: embed(texts),
    model(**enc) (mean of the token vectors of the same token ids the others get), bytes."""

    kind = "embedding"

    def __init__(self, static, folder: Path, tokenizer):
        self.static, self.folder, self.tokenizer = static, folder, tokenizer
        self.source, self.meta, self.pooling = str(folder), {}, None
        self.table = torch.from_numpy(static.embedding.astype("float32"))
        self.model = self._forward

    def _forward(self, input_ids=None, attention_mask=None, **kw):
        e = torch.nn.functional.embedding(input_ids.clamp(max=self.table.shape[0] - 1), self.table)
        m = attention_mask.unsqueeze(-1).to(e.dtype)
        return (e * m).sum(1) / m.sum(1).clamp(min=1)

    def embed(self, texts, batch_size: int = 32, max_length=None):
        return torch.from_numpy(self.static.encode(list(texts), batch_size=max(batch_size, 1024)))

    def num_params(self) -> int:
        return int(self.table.numel())

    def disk_bytes(self) -> dict:
        files = [f for f in self.folder.rglob("*") if f.is_file()]
        weights = sum(f.stat().st_size for f in files if f.suffix == ".safetensors")
        return {"bytes": weights, "bytes_total": sum(f.stat().st_size for f in files)}

    def memory_bytes(self) -> int:
        return self.table.numel() * 4


def _model2vec(w: Worker, spec: PlanSpec, folder: Path, log) -> dict | None:
    label = "model2vec static embedding (distilled, 256 dims)"
    if importlib.util.find_spec("model2vec") is None:
        return {"label": label, "error": "not measured: pip install model2vec (and skeletoken) to add it"}
    try:
        from model2vec.distill import distill

        log("peer: distilling a model2vec static embedding from the model ...")
        t0 = time.perf_counter()
        static = distill(model_name=spec.model, pca_dims=256, device="cpu")
        static.save_pretrained(str(folder / "model2vec"))
        fig = _figures(w, StaticEmbedding(static, folder / "model2vec", w.original.tokenizer))
        fig["build_seconds"] = time.perf_counter() - t0
        return {"label": label, **fig}
    except Exception as e:  # the peer is context, not the plan
        return {"label": label, "error": f"not measured ({type(e).__name__}: {str(e)[:200]})"}
