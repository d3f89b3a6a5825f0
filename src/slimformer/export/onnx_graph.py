"""Graph work of the ONNX export: ONNX Runtime's optimizer, q/k/v/o/FFN roles of the MatMul
nodes (names from the adapters), SmoothQuant on the graph, and int8 quantization (dynamic and
static QDQ) with ONNX Runtime's quantizer. See export/onnx.py for what the defaults are and why."""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn


from .options import STATIC_OBSERVERS, input_names

_log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# ORT transformer optimizer

def _optimize(path: Path, model: nn.Module, profile: str, work: Path, gelu_approximation: bool = False) -> tuple[Path, dict]:
    from ..adapters import get_adapter

    cfg = model.config
    adapter = get_adapter(model)
    mt = adapter.ort_model_type
    if profile == "none" or mt is None:
        why = "fusion='none'" if profile == "none" else f"no ORT fusion profile for model_type {cfg.model_type!r}"
        return path, {"applied": False, "why": why}
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    fo = FusionOptions(mt)
    if profile == "cpu":
        # Measured slower on CPU (ORT 1.31, AVX2) than what ORT's session builds from the unfused
        # graph: Attention/MultiHeadAttention, SkipLayerNormalization (~10x slower than Add +
        # LayerNormalization), EmbedLayerNormalization (and it quantizes to a per-tensor table),
        # BiasGelu (it keeps the bias from fusing into the int8 MatMulIntegerToFloat).
        for k in ("enable_attention", "enable_skip_layer_norm", "enable_bias_skip_layer_norm",
                  "enable_embed_layer_norm", "enable_bias_gelu", "enable_qordered_matmul"):
            setattr(fo, k, False)
    fo.enable_gelu_approximation = bool(gelu_approximation)
    heads, hidden = adapter.heads_and_hidden(model)
    if not heads or hidden % heads:  # heads pruned unevenly across layers: let ORT read them from the graph
        heads, hidden = 0, 0
    with _quiet():
        om = optimize_model(str(path), model_type=mt, num_heads=int(heads), hidden_size=int(hidden),
                            optimization_options=fo, opt_level=0)
    fused = {k: v for k, v in om.get_fused_operator_statistics().items() if v}
    out = work / "optimized.onnx"
    om.save_model_to_file(str(out))
    return out, {"applied": True, "profile": profile, "model_type": mt, "fused": fused}


# ---------------------------------------------------------------------------------------------
# roles: which MatMul is q/k/v, o, FFN up or down (names from the adapters, never matched here)


def module_roles(model: nn.Module) -> dict[str, str]:
    """{qualified module name: role} for the linear layers an adapter knows; {} if none does."""
    from ..adapters import get_adapter
    from ..core.errors import UnsupportedArchitectureError

    try:
        adapter = get_adapter(model)
        layers = adapter.layers(model)
    except UnsupportedArchitectureError:
        return {}
    names = {id(m): n for n, m in model.named_modules()}
    roles: dict[str, str] = {}
    for li in layers:
        for a in (li.attention, li.cross_attention):
            if a is None:
                continue
            for m in (a.q, a.k, a.v, a.qkv):
                if m is not None:
                    roles[names[id(m)]] = "qkv"
            roles[names[id(a.o)]] = "o"
        for m in (li.ffn.up, li.ffn.gate):
            if m is not None:
                roles[names[id(m)]] = "up"
        roles[names[id(li.ffn.down)]] = "down"
    return roles


def onnx_node_roles(proto, roles: dict[str, str]) -> dict[str, str]:
    """{ONNX MatMul node name: role}. The TorchScript exporter names nodes by module scope
    (`/m/encoder/layer.0/attention/self/query/MatMul`, `m` being the export wrapper); where a
    fusion renamed the node, an untransposed weight still carries the module name
    (`m.transformer.h.0.attn.c_attn.weight`, GPT-2's Conv1D)."""
    out = {}
    for n in proto.graph.node:
        if n.op_type != "MatMul":
            continue
        scope = n.name.rsplit("/", 1)[0]  # ModuleList children appear as "layer.0": compare dotted
        module = scope[len("/m/"):].replace("/", ".") if scope.startswith("/m/") else ""
        w = n.input[1] if len(n.input) > 1 else ""
        if module not in roles and w.startswith("m.") and w.endswith(".weight"):
            module = w[len("m."):-len(".weight")]
        out[n.name] = roles.get(module, "other")
    return out


# ---------------------------------------------------------------------------------------------
# calibration


def _calibration_texts(texts, n: int) -> list[str]:
    from ..data.calibration import calibration_texts, sample_sentences

    return calibration_texts(sample_sentences() if texts is None else texts, n=n)


def _torch_batches(sm, texts: list[str], o: dict, batch_size: int = 32) -> list[dict]:
    names = input_names(sm)
    out = []
    for i in range(0, len(texts), batch_size):
        enc = sm.tokenize(texts[i : i + batch_size], o["calibration_max_length"])
        out.append({k: enc[k] for k in names})
    return out


# ---------------------------------------------------------------------------------------------
# SmoothQuant: exact in float


@torch.no_grad()
def fold_vo_smoothing(model: nn.Module, batches: list[dict], alpha: float, floor: float | None = 0.5) -> int:
    """Per attention block: o input channel j gets s_j from calibration statistics; v's output
    row j (and bias) is divided by s_j, o's input column j multiplied by s_j. Exact, since the
    attention mix is linear per channel. Skipped where v/o are not plain Linear layers or k/v
    heads are shared (GQA). Returns the number of blocks changed."""
    from ..adapters import get_adapter
    from ..core.errors import UnsupportedArchitectureError
    from ..quantize.smoothquant import floor_absmax, smoothing_scales

    try:
        layers = get_adapter(model).layers(model)
    except UnsupportedArchitectureError:
        return 0
    blocks = [a for li in layers for a in (li.attention, li.cross_attention)
              if a is not None and a.kind == "self" and isinstance(a.v, nn.Linear) and isinstance(a.o, nn.Linear)
              and a.num_kv_heads == a.num_heads and a.v.out_features == a.o.in_features]
    if not blocks:
        return 0
    amax: dict[int, torch.Tensor] = {}

    def hook(mod, args):
        x = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0).float()
        amax[id(mod)] = torch.maximum(amax[id(mod)], x) if id(mod) in amax else x

    handles = [a.o.register_forward_pre_hook(hook) for a in blocks]
    try:
        model.eval()
        for b in batches:
            model(**b)
    finally:
        for h in handles:
            h.remove()
    for a in blocks:
        s = smoothing_scales(floor_absmax(amax[id(a.o)], floor), a.o.weight.abs().amax(0), alpha)
        a.v.weight.div_(s[:, None].to(a.v.weight.dtype))
        if a.v.bias is not None:
            a.v.bias.div_(s.to(a.v.bias.dtype))
        a.o.weight.mul_(s[None, :].to(a.o.weight.dtype))
    return len(blocks)


def weight_matmul_groups(proto) -> dict[str, list]:
    """{activation tensor: [MatMul nodes reading it with a 2-D constant weight used only there]}."""
    inits = {i.name: i for i in proto.graph.initializer}
    uses: dict[str, int] = {}
    for n in proto.graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    groups: dict[str, list] = {}
    for n in proto.graph.node:
        if (n.op_type == "MatMul" and len(n.input) == 2 and n.input[1] in inits and n.input[0] not in inits
                and len(inits[n.input[1]].dims) == 2 and uses[n.input[1]] == 1):
            groups.setdefault(n.input[0], []).append(n)
    return groups


def activation_absmax(proto, names: list[str], feeds: list[dict]) -> dict[str, np.ndarray]:
    """Per-channel (last dim) max |x| of graph tensors `names` over the calibration feeds."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    m = onnx.ModelProto()
    m.CopyFrom(proto)
    del m.graph.output[:]
    for n in names:
        m.graph.output.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    ins = [i.name for i in sess.get_inputs()]
    amax: dict[str, np.ndarray] = {}
    for f in feeds:
        for n, x in zip(names, sess.run(names, {k: f[k] for k in ins})):
            a = np.abs(x).reshape(-1, x.shape[-1]).max(0)
            amax[n] = np.maximum(amax[n], a) if n in amax else a
    return amax


def smooth_graph(proto, feeds: list[dict], alpha: float, floor: float | None = 0.5, select=None) -> dict:
    """SmoothQuant on the ONNX graph, in place: for each activation x read by weight MatMuls
    (chosen by `select(nodes)`), insert `Mul(x, 1/s)` feeding them and scale the weight rows by s.
    s_j = max|x_j|^alpha / max|W_j|^(1-alpha). Exact in float; int8 then sees x/s."""
    from onnx import helper, numpy_helper

    from ..quantize.smoothquant import floor_absmax, smoothing_scales

    groups = {x: ns for x, ns in weight_matmul_groups(proto).items() if select is None or select(ns)}
    if not groups:
        return {"groups": 0}
    amax = activation_absmax(proto, list(groups), feeds)
    inits = {i.name: i for i in proto.graph.initializer}
    inserts = []
    for x, nodes in groups.items():
        ws = [numpy_helper.to_array(inits[n.input[1]]).astype(np.float32) for n in nodes]  # (in, out)
        wmax = np.max([np.abs(w).max(1) for w in ws], axis=0)
        act = floor_absmax(torch.from_numpy(amax[x].astype(np.float32)), floor)
        s = smoothing_scales(act, torch.from_numpy(wmax), alpha).numpy()
        for n, w in zip(nodes, ws):
            inits[n.input[1]].CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(np.float32), n.input[1]))
        inv = numpy_helper.from_array((1.0 / s).astype(np.float32), f"{x}_smooth_inv")
        proto.graph.initializer.append(inv)
        y = f"{x}_smoothed"
        inserts.append((nodes[0], helper.make_node("Mul", [x, inv.name], [y], name=f"{x}_smooth")))
        for n in nodes:
            n.input[0] = y
    for first, mul in inserts:  # right before the first reader: keeps the graph topologically sorted
        idx = next(i for i, n in enumerate(proto.graph.node) if n is first)
        proto.graph.node.insert(idx, mul)
    return {"groups": len(groups), "matmuls": sum(len(v) for v in groups.values())}


# ---------------------------------------------------------------------------------------------
# int8


@contextlib.contextmanager
def _quiet():
    """ORT's tools log advice at WARNING on the root logger; keep the user's console clean."""
    prev = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(prev)


def _token_gather_4bit(model: nn.Module, proto, o: dict) -> tuple[str | None, str | None]:
    """(name of the Gather of the token-embedding table to store in 4 bits, None) when
    embedding_bits=4 applies; (None, why not) when it was asked for but cannot; (None, None)."""
    if o["embedding_bits"] != 4:
        return None, None
    if not o["quantize_embeddings"]:
        return None, "quantize_embeddings=False: embedding tables stay float32"
    from .embedding import find_token_gather

    table = _token_table(model)
    if table is None:
        return None, "no token-embedding table found (adapter / get_input_embeddings)"
    if table.shape[1] % 2:
        return None, f"embedding width {table.shape[1]} is odd; 4-bit rows are packed two values per byte"
    node, why = find_token_gather(proto, table)
    return (node.name, None) if node is not None else (None, why)


def _token_table(model: nn.Module) -> np.ndarray | None:
    from ..adapters import get_adapter
    from ..core.errors import UnsupportedArchitectureError

    try:
        emb = get_adapter(model).embeddings(model)
    except (UnsupportedArchitectureError, NotImplementedError, AttributeError):
        get = getattr(model, "get_input_embeddings", None)
        emb = get() if get is not None else None
    w = getattr(emb, "weight", None)
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        return None
    return w.detach().float().cpu().numpy()


def quantize_int8(proto, out_path: Path, node_roles: dict[str, str], o: dict, work: Path,
                  keep_float: list[str] = ()) -> dict:
    """Dynamic int8 with onnxruntime.quantization.quantize_dynamic. MatMuls whose role is in
    o["reduce_range"] get 7-bit weights (a first pass limited to them), the rest full 8-bit.
    Nodes in `keep_float` are left as they are (the token Gather that embedding_bits=4 replaces)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    wt = QuantType.QInt8 if o["weight_type"] == "int8" else QuantType.QUInt8
    if _has_contrib_ops(proto):  # fused ops: ONNX shape inference cannot type their outputs
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        proto = SymbolicShapeInference.infer_shapes(proto, auto_merge=True)
    matmuls = [n.name for n in proto.graph.node if n.op_type == "MatMul"]
    rr = [n for n in matmuls if node_roles.get(n, "other") in o["reduce_range"]]
    exclude = list(keep_float)
    if not o["quantize_embeddings"]:
        exclude = [n.name for n in proto.graph.node if n.op_type in ("Gather", "EmbedLayerNormalization")]
    common = dict(per_channel=o["per_channel"], weight_type=wt, extra_options={"MatMulConstBOnly": True})
    src = work / "to_quantize.onnx"
    onnx.save(proto, str(src))
    with _quiet():
        if rr and len(rr) < len(matmuls):
            mid = work / "quantized_rr.onnx"
            quantize_dynamic(src, mid, reduce_range=True, nodes_to_quantize=rr, op_types_to_quantize=["MatMul"],
                             **common)
            quantize_dynamic(mid, out_path, reduce_range=False, nodes_to_exclude=rr + exclude, **common)
        else:
            quantize_dynamic(src, out_path, reduce_range=bool(rr), nodes_to_exclude=exclude, **common)
    q = onnx.load(str(out_path), load_external_data=False)
    counts: dict[str, int] = {}
    for n in q.graph.node:
        if n.op_type in ("MatMulInteger", "DynamicQuantizeLinear", "QAttention", "QEmbedLayerNormalization",
                         "DequantizeLinear", "MatMul"):
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return {"per_channel": o["per_channel"], "weight_type": o["weight_type"], "reduce_range_matmuls": len(rr),
            "quantize_embeddings": o["quantize_embeddings"], "ops": counts}


# op types int8-static quantizes (QDQ pairs around them). The ones ONNX Runtime's CPU session
# turns into int8 kernels or passes int8 through: MatMul (QLinearMatMul, or MatMulIntegerToFloat
# where the output stays float), Add/Mul (QLinearAdd/QLinearMul: biases, the smoothing Mul),
# Reshape/Transpose/Squeeze/Unsqueeze (Q/DQ dropped: int8 moves through), Gather (int8 tables).
# LayerNormalization, Softmax, Gelu, Div and the residual stream stay float.
STATIC_OP_TYPES = ("MatMul", "Gather", "Add", "Mul", "Reshape", "Transpose", "Squeeze", "Unsqueeze")


class _FeedReader:
    """onnxruntime.quantization.CalibrationDataReader over a list of feed dicts."""

    def __init__(self, feeds: list[dict], input_names: list[str]):
        self.feeds = [{k: np.ascontiguousarray(f[k]) for k in input_names if k in f} for f in feeds]
        self.i, self.end = 0, len(self.feeds)

    def get_next(self):
        if self.i >= self.end:
            return None
        self.i += 1
        return self.feeds[self.i - 1]

    def __len__(self):
        return len(self.feeds)

    def set_range(self, start_index: int, end_index: int):
        self.i, self.end = start_index, min(end_index, len(self.feeds))


def quantize_int8_static(proto, out_path: Path, node_roles: dict[str, str], feeds: list[dict], o: dict, work: Path,
                         keep_float: list[str] = ()) -> dict:
    """Static int8 with onnxruntime.quantization.quantize_static, QDQ format: activation ranges
    from the calibration feeds (observer `o["static_observer"]`, see STATIC_OBSERVERS), uint8
    activations per tensor (asymmetric), int8/uint8 weights per output channel when
    o["per_channel"], 7-bit weights for MatMuls whose role is in o["reduce_range"]. ONNX Runtime's
    session fuses DQ -> op -> Q into int8 kernels, so int8 flows between consecutive quantized ops
    (count them with `int8_flow(optimized_model)`)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    wt = QuantType.QInt8 if o["weight_type"] == "int8" else QuantType.QUInt8
    if _has_contrib_ops(proto):
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        proto = SymbolicShapeInference.infer_shapes(proto, auto_merge=True)
    inits = {i.name for i in proto.graph.initializer}
    rr_weights = sorted({n.input[1] for n in proto.graph.node if n.op_type == "MatMul" and n.input[1] in inits
                         and node_roles.get(n.name, "other") in o["reduce_range"]})
    readers, mask = mask_readers(proto)
    exclude = list(keep_float) + readers
    if not o["quantize_embeddings"]:
        exclude += [n.name for n in proto.graph.node if n.op_type in ("Gather", "EmbedLayerNormalization")]
    src = work / "to_quantize.onnx"
    onnx.save(proto, str(src))
    method = getattr(CalibrationMethod, STATIC_OBSERVERS[o["static_observer"]])
    extra = {"ActivationSymmetric": False, "WeightSymmetric": True,
             "TensorQuantOverrides": {w: [{"reduce_range": True}] for w in rr_weights}}
    names = [i.name for i in proto.graph.input]
    cache = work / "calibration.json"
    with _quiet(), contextlib.redirect_stdout(io.StringIO()):  # histogram calibrators print progress
        _calibrate(src, work, method, feeds, names, skip=_outputs(proto, readers) | mask, percentile=o["static_percentile"],
                   cache=cache)
        quantize_static(str(src), str(out_path), None, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(STATIC_OP_TYPES), per_channel=o["per_channel"],
                        activation_type=QuantType.QUInt8, weight_type=wt, nodes_to_exclude=exclude,
                        calibrate_method=method, extra_options=extra, calibration_cache_path=str(cache))
    q = onnx.load(str(out_path), load_external_data=False)
    counts: dict[str, int] = {}
    for n in q.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear", "MatMul", "Gather"):
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return {"format": "QDQ", "observer": o["static_observer"], "ort_calibration_method": method.name,
            "percentile": o["static_percentile"] if o["static_observer"] == "percentile" else None,
            "per_channel": o["per_channel"], "weight_type": o["weight_type"], "activation_type": "uint8",
            "reduce_range_weights": len(rr_weights), "quantize_embeddings": o["quantize_embeddings"],
            "op_types": list(STATIC_OP_TYPES), "ops": counts}


def _outputs(proto, node_names: list[str]) -> set[str]:
    wanted = set(node_names)
    return {o for n in proto.graph.node if n.name in wanted for o in n.output}


def _calibrate(src: Path, work: Path, method, feeds: list[dict], names: list[str], skip: set[str],
               percentile: float, cache: Path) -> None:
    """Activation ranges with ORT's calibrator, one batch per pass (ranges and histograms merge
    across batches of different sequence lengths, memory stays flat), tensors in `skip` left out
    (the mask and masked attention scores: ORT would calibrate them though their node is excluded, and its
    histograms fail on a +-3.4e38 range). Written to `cache` for quantize_static."""
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    cal = create_calibrator(src, list(STATIC_OP_TYPES), augmented_model_path=str(work / "augmented.onnx"),
                            calibrate_method=method, extra_options={"symmetric": False, "percentile": percentile})
    if getattr(cal, "tensors_to_calibrate", None) is not None:
        cal.tensors_to_calibrate = set(cal.tensors_to_calibrate) - skip
    for f in feeds:
        cal.collect_data(_FeedReader([f], names))
    save_tensors_data(cal.compute_data(), cache)


def mask_readers(proto, mask_input: str = "attention_mask") -> tuple[list[str], set[str]]:
    """(names of the nodes where the additive attention mask meets data, e.g. `Add(scores, mask)`.
    The mask tensors are those computed from the mask input, constants and integer (shape)
    tensors only. The additive mask holds float32 min (-3.4e38) at padded keys: a QDQ pair on
    the masked scores gets a range of +-3.4e38 and rounds every score to 0 (and ORT's histogram
    observers fail on such a range), so these nodes stay float."""
    import onnx
    from onnx import TensorProto

    try:
        typed = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # noqa: BLE001 - contrib ops: fall back to no type information
        typed = proto
    elem = {v.name: v.type.tensor_type.elem_type for v in
            list(typed.graph.value_info) + list(typed.graph.input) + list(typed.graph.output)}
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE, TensorProto.UNDEFINED)
    consts = {i.name for i in proto.graph.initializer}
    consts |= {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    derived = {i.name for i in proto.graph.input if i.name == mask_input}
    readers = []
    for n in proto.graph.node:  # topological order
        ins = [i for i in n.input if i]
        if not any(i in derived for i in ins):
            continue
        if all(i in derived or i in consts or elem.get(i, TensorProto.UNDEFINED) not in floats for i in ins):
            derived.update(n.output)
        else:
            readers.append(n.name)
    return readers, derived


def int8_flow(proto) -> dict:
    """What an ONNX Runtime session made of a QDQ graph (load the file written to
    SessionOptions.optimized_model_filepath): {op_type: count} of the int8 ops, the
    DequantizeLinear nodes left, and `int8_edges`: tensors an int8 op writes and another int8 op
    reads (activations that stay int8 between ops, never dequantized on the way)."""
    from onnx import TensorProto

    int8_ops = {"QLinearMatMul", "QLinearAdd", "QLinearMul", "QLinearSoftmax", "QLinearConcat", "QAttention",
                "QLinearSigmoid", "QLinearLeakyRelu", "QLinearAveragePool", "QLinearGlobalAveragePool"}
    moves = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Gather"}  # int8 in, int8 out where fed int8
    vi = {v.name: v.type.tensor_type.elem_type for v in list(proto.graph.value_info) + list(proto.graph.output)}
    int8 = {TensorProto.UINT8, TensorProto.INT8}
    producer = {o: n for n in proto.graph.node for o in n.output}
    counts: dict[str, int] = {}
    for n in proto.graph.node:
        if n.op_type in int8_ops or n.op_type in ("DequantizeLinear", "QuantizeLinear", "DynamicQuantizeLinear",
                                                  "MatMulIntegerToFloat", "MatMul", "MatMulInteger"):
            counts[n.op_type] = counts.get(n.op_type, 0) + 1

    def int8_source(t: str, depth: int = 0):
        """The int8 op (or QuantizeLinear) whose output reaches tensor t through data movement only."""
        p = producer.get(t)
        if p is None or depth > 8:
            return None
        if p.op_type in int8_ops or p.op_type == "QuantizeLinear":
            return p
        if p.op_type in moves and (vi.get(t) in int8 or vi.get(p.input[0]) in int8):
            return int8_source(p.input[0], depth + 1)
        return None

    edges = 0
    for n in proto.graph.node:
        if n.op_type in int8_ops:
            for i in n.input:
                src = int8_source(i)
                if src is not None and src.op_type in int8_ops:
                    edges += 1
    return {"ops": counts, "int8_ops": sum(v for k, v in counts.items() if k in int8_ops), "int8_edges": edges}


def _has_contrib_ops(proto) -> bool:
    return any(n.domain == "com.microsoft" for n in proto.graph.node)


# ---------------------------------------------------------------------------------------------
# int8 weights for runtimes that quantize activations themselves (quantize="int8-weights")


def int8_weight_graph(proto, token_table: np.ndarray | None = None) -> dict:
    """In place: each MatMul with a 2-D constant weight W (in, out) gets int8 codes per output
    channel (symmetric, the same codes and scales as slimformer's PyTorch Int8Linear:
    core.qmath.quantize_per_channel_symmetric) behind a standard DequantizeLinear(axis=1); the
    token-embedding table (when `token_table` is given and a Gather reads it) the same per row.
    Activations stay float in the graph: a runtime that recognizes int8-compressed weights
    (OpenVINO's CPU plugin) quantizes them itself at run time, per token or per group of
    channels, and runs int8 products; any other runtime dequantizes and runs the float graph."""
    from onnx import helper, numpy_helper

    from ..core.qmath import quantize_per_channel_symmetric

    inits = {i.name: i for i in proto.graph.initializer}
    readers: dict[str, list] = {}
    for n in proto.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)

    def replace(name: str, axis: int) -> int:
        w = torch.from_numpy(numpy_helper.to_array(inits[name]).astype(np.float32))
        q, s = quantize_per_channel_symmetric(w, 8, axis=axis)
        proto.graph.initializer.remove(inits[name])
        proto.graph.initializer.extend([numpy_helper.from_array(q.numpy(), name + "_int8"),
                                        numpy_helper.from_array(s.numpy().astype(np.float32), name + "_scale"),
                                        numpy_helper.from_array(np.zeros(s.shape, np.int8), name + "_zero")])
        proto.graph.node.insert(0, helper.make_node("DequantizeLinear", [name + "_int8", name + "_scale",
                                                                         name + "_zero"], [name], axis=axis,
                                                    name=name + "_dequantize"))
        return int(w.numel())

    matmuls, elements, table, widths = 0, 0, None, set()
    for name, init in list(inits.items()):
        users = readers.get(name, [])
        if (len(init.dims) == 2 and users and init.data_type == 1
                and all(u.op_type == "MatMul" and len(u.input) == 2 and u.input[1] == name for u in users)):
            widths.add(int(init.dims[0]))
            elements += replace(name, axis=1)
            matmuls += len(users)
    if token_table is not None:
        for name, init in list(inits.items()):
            users = readers.get(name, [])
            if (tuple(init.dims) == token_table.shape and users and all(u.op_type == "Gather" and u.input[0] == name
                                                                        for u in users)
                    and np.array_equal(numpy_helper.to_array(init), token_table)):
                elements += replace(name, axis=0)
                table = name
                break
    return {"matmuls": matmuls, "weights_int8": elements, "token_table": table, "input_widths": sorted(widths)}
