"""Run an exported ONNX folder with ONNX Runtime, behind the SlimModel interface.

    m = load_onnx("out/minilm-int8", threads=2)
    emb = m.embed(["a sentence", "another"])          # (B, H) torch tensor, same pooling as torch
    out = m.model(**m.tokenize(["a sentence"]))       # out.last_hidden_state (or out.logits)
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from ..core.errors import ModelLoadError
from ..models.wrapper import ArtifactText, Pooling
from .options import MODEL_FILE, ONNX_META_FILE

_log = logging.getLogger(__name__)
RUNTIMES = ("onnxruntime", "openvino")


def openvino_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


class OpenVinoSession:
    """OpenVINO's compiled model behind the part of ONNX Runtime's session interface the wrappers
    use (get_inputs / get_outputs / run), so an exported folder runs unchanged on either.

    precision: "bf16" where the CPU runs bf16 natively (AMX-BF16 / AVX512-BF16), else "f32" (the
    inference precision of the float ops); int8-compressed weights (quantize="int8-weights") run
    int8 products with activations quantized at run time per token and group of
    `dynamic_quantization_group_size` channels (0: off, float products on the dequantized weights)."""

    class _Port:
        shape = None  # read only for KV-cache inputs, which OpenVINO-run folders do not have

        def __init__(self, name):
            self.name = name

    def __init__(self, model_path, threads: int | None = None, options: dict | None = None,
                 precision: str | None = None):
        if not openvino_available():
            raise ModelLoadError("runtime='openvino' needs the openvino package: pip install 'slimformer[openvino]'")
        import openvino as ov

        from ..core.hardware import fast_bf16

        options = options or {}
        self.precision = precision or ("bf16" if fast_bf16("cpu") else "f32")
        cfg = {"INFERENCE_PRECISION_HINT": self.precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            cfg["INFERENCE_NUM_THREADS"] = int(threads)
        g = options.get("dynamic_quantization_group_size")
        if g is not None:
            cfg["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = str(int(g))
        self.config = cfg
        core = ov.Core()
        try:
            self.compiled = core.compile_model(core.read_model(str(model_path)), "CPU", cfg)
        except Exception as e:  # OpenVINO raises RuntimeError with its own text
            raise ModelLoadError(f"{model_path}: OpenVINO could not compile it ({type(e).__name__}: "
                                 f"{str(e)[:300]})") from None
        self.request = self.compiled.create_infer_request()
        self._inputs = [self._Port(p.get_any_name()) for p in self.compiled.inputs]
        self._outputs = [self._Port(p.get_any_name()) for p in self.compiled.outputs]

    def get_inputs(self):
        return self._inputs

    def get_outputs(self):
        return self._outputs

    def run(self, names, feed):
        res = self.request.infer(feed)
        by_name = {k.get_any_name(): v for k, v in res.items()}
        return [np.array(by_name[n]) for n in (names or [o.name for o in self._outputs])]


class _OrtModule:
    """Callable like a transformers model: `model(**enc)` -> ModelOutput with torch tensors.

    Inputs the graph lacks are dropped (e.g. `use_cache`), inputs it needs but were not given
    (token_type_ids) are zeros shaped like input_ids."""

    def __init__(self, session, config, kind: str, output_name: str):
        self.session, self.config, self.kind, self.output_name = session, config, kind, output_name
        self.input_names = [i.name for i in session.get_inputs()]

    def __call__(self, input_ids=None, attention_mask=None, **kw):
        from transformers.modeling_outputs import BaseModelOutput, CausalLMOutput, SequenceClassifierOutput

        if input_ids is None:
            raise ValueError("the ONNX model needs input_ids")
        ids = _np(input_ids)
        given = {"input_ids": ids, "attention_mask": attention_mask, **kw}
        feed = {}
        for name in self.input_names:
            if name.startswith("past_key_values."):        # a KV-cache graph run without a cache
                continue
            v = given.get(name)
            if v is None:
                v = np.ones_like(ids) if name == "attention_mask" else np.zeros_like(ids)
            feed[name] = _np(v)
        feed.update(self.empty_cache(ids.shape[0]))
        out = torch.from_numpy(self.session.run([self.output_name], feed)[0])
        if self.kind == "embedding":
            return BaseModelOutput(last_hidden_state=out)
        if self.kind == "classification":
            return SequenceClassifierOutput(logits=out)
        return CausalLMOutput(logits=out)

    forward = __call__

    def eval(self):
        return self

    def empty_cache(self, batch: int) -> dict:
        """Length-0 past keys / values for a KV-cache graph (export_onnx_lm); {} for other graphs."""
        out = {}
        for i in self.session.get_inputs():
            if i.name.startswith("past_key_values."):
                _, heads, _, dim = i.shape
                out[i.name] = np.zeros((batch, heads, 0, dim), np.float32)
        return out


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x, dtype=np.int64))


class OnnxSlimModel(ArtifactText):
    """An exported folder loaded with ONNX Runtime (CPU). Quacks like SlimModel for evaluation:
    kind, tokenizer, pooling, source, meta, config, tokenize(), embed(), model(**enc), num_params().

    threads: ORT intra-op threads (None: ORT's default). spin: let idle ORT worker threads
    busy-wait after each run (ORT's default; batch-1 latency of back-to-back calls ~12% lower
    on an idle 2-core machine). Turn it off when other work shares the cores: spinning threads
    steal them from whatever runs next - a torch model timed right after an ORT call ran 3-25x
    slower here - and on a busy machine ORT itself was faster without it.
    The session is created once, with the graph-optimizer settings recorded at export time.
    runtime: "onnxruntime" or "openvino"; None: the one the export names (slimformer_onnx.json
    "runtime": OpenVINO for quantize="int8-weights" when it is installed, else ONNX Runtime).
    """

    def __init__(self, folder, threads: int | None = None, spin: bool = True, runtime: str | None = None):
        from .options import require_onnx

        require_onnx()
        import onnxruntime as ort
        import transformers as tf

        folder = Path(folder).expanduser()
        meta_path = folder / ONNX_META_FILE
        if not meta_path.exists():
            raise ModelLoadError(f"{folder}: no {ONNX_META_FILE}; not a folder written by slimformer's export_onnx")
        self.meta = json.loads(meta_path.read_text())
        self.folder = folder
        self.kind = self.meta["kind"]
        self.source = str(folder)
        p = self.meta.get("pooling")
        self.pooling = Pooling(**p) if p else (Pooling() if self.kind == "embedding" else None)
        try:
            self.config = tf.AutoConfig.from_pretrained(folder)
            self.tokenizer = tf.AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"{folder}: could not read the config or tokenizer ({e})") from None
        if self.kind == "causal-lm" and getattr(self.tokenizer, "pad_token", None) is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if runtime is None:
            runtime = self.meta.get("runtime", "onnxruntime")
            if runtime == "openvino" and not openvino_available():
                _log.warning("%s is meant for OpenVINO (int8 weights, activations quantized at run time), which is "
                             "not installed: running it with ONNX Runtime, correct but slower "
                             "(pip install 'slimformer[openvino]')", folder)
                runtime = "onnxruntime"
        if runtime not in RUNTIMES:
            raise ModelLoadError(f"load_onnx: runtime={runtime!r}; accepted: {', '.join(RUNTIMES)}")
        self.runtime = runtime
        model_path = folder / self.meta.get("model_file", MODEL_FILE)
        out_name = self.meta["outputs"][0]["name"]
        if runtime == "openvino":
            self.session = OpenVinoSession(model_path, threads, self.meta.get("openvino", {}))
            self.model = _OrtModule(self.session, self.config, self.kind, out_name)
            return
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
        if not spin:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3
        disabled = self.meta.get("session", {}).get("disabled_optimizers") or None
        try:
            self.session = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"],
                                                disabled_optimizers=disabled)
        except Exception as e:  # ORT raises its own exception types
            raise ModelLoadError(f"{model_path}: ONNX Runtime could not load it ({type(e).__name__}: {e})") from None
        self.model = _OrtModule(self.session, self.config, self.kind, out_name)

    def __call__(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def num_params(self) -> int:
        """Elements of the ONNX initializers (int8 weights count one per element, like the float ones;
        a 4-bit block-quantized table counts its values, not its packed bytes, scales and zero points)."""
        import onnx

        counted = [st["params"] for st in self.meta.get("steps", []) if "params" in st]
        if counted:  # an OpenVINO IR (quantize="int8-nncf"): counted at export
            return int(counted[-1])
        m = onnx.load(str(self.folder / self.meta.get("model_file", MODEL_FILE)), load_external_data=False)
        per_byte, skip = {}, set()
        for n in m.graph.node:
            if n.op_type == "GatherBlockQuantized":
                bits = next((a.i for a in n.attribute if a.name == "bits"), 4)
                per_byte[n.input[0]] = 8 // bits
                skip.update(n.input[2:])
        return int(sum((int(np.prod(t.dims)) if len(t.dims) else 1) * per_byte.get(t.name, 1)
                       for t in m.graph.initializer if t.name not in skip))

    def disk_bytes(self) -> dict:
        """Bytes on disk: the graph (weights), and the whole folder."""
        files = [f for f in self.folder.rglob("*") if f.is_file()]
        weights = sum(f.stat().st_size for f in files if f.suffix in (".onnx", ".data", ".bin"))
        return {"bytes": weights, "bytes_total": sum(f.stat().st_size for f in files)}

    def memory_bytes(self) -> int:
        """The graph's initializers held in memory (about the .onnx file's size)."""
        return self.disk_bytes()["bytes"]

    def _greedy(self, input_ids, steps: int) -> tuple[np.ndarray, float]:
        """(ids with `steps` greedy tokens appended, seconds of the steps after the prefill)."""
        if not self.meta.get("kv_cache"):
            raise ValueError("generate() needs a graph with a KV cache (slimformer.export.export_onnx_lm)")
        import time

        ids = _np(input_ids)
        names = [o.name for o in self.session.get_outputs()]
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), **self.model.empty_cache(ids.shape[0])}
        out, t0 = [ids], None
        for i in range(steps + 1):
            res = dict(zip(names, self.session.run(names, feed)))
            if i == 0:
                t0 = time.perf_counter()          # the prefill is not a decoding step
            if i == steps:
                break
            nxt = res["logits"][:, -1].argmax(-1)[:, None].astype(np.int64)
            out.append(nxt)
            mask = np.ones((ids.shape[0], feed["attention_mask"].shape[1] + 1), np.int64)
            feed = {"input_ids": nxt, "attention_mask": mask}
            feed.update({n.replace("present.", "past_key_values."): v for n, v in res.items() if n.startswith("present.")})
        return np.concatenate(out, 1), time.perf_counter() - t0

    @torch.inference_mode()
    def generate(self, input_ids, max_new_tokens: int = 32) -> torch.Tensor:
        """Greedy decoding through the graph's KV cache (graphs from export_onnx_lm): one prefill
        call, then one call per new token. input_ids (batch, T) without padding -> (batch, T + new)."""
        return torch.from_numpy(self._greedy(input_ids, max_new_tokens)[0])

    def decode_seconds(self, prompt, steps: int) -> float:
        """Wall time of `steps` greedy decoding steps after prefilling `prompt` (see
        evaluate.efficiency.decode_seconds)."""
        return self._greedy(prompt, steps)[1]

    def __repr__(self) -> str:
        return f"OnnxSlimModel({self.source!r}, kind={self.kind!r}, quantize={self.meta.get('quantize')!r})"


def load_onnx(folder, threads: int | None = None, spin: bool = True, runtime: str | None = None) -> OnnxSlimModel:
    """Load a folder written by `export_onnx` (see OnnxSlimModel)."""
    return OnnxSlimModel(folder, threads=threads, spin=spin, runtime=runtime)


def _load_folder(folder, kind=None) -> OnnxSlimModel:
    """`slimformer.load(DIR)` of an exported folder."""
    m = OnnxSlimModel(folder)
    if kind is not None and kind != m.kind:
        raise ModelLoadError(f"{folder}: an exported {m.kind} model, not {kind}")
    return m
