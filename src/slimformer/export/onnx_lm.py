"""Llama-family decoder LMs as one ONNX Runtime graph with a KV cache and int4 weights.

    from slimformer.export import export_onnx_lm, load_onnx
    folder = export_onnx_lm(model, "out/smollm2-ort")      # float, or quantized by slimformer
    lm = load_onnx(folder)                                  # evaluate(lm, task) / lm.generate(ids, 32)

The graph is written op by op (no tracing), the way ONNX Runtime's own generator builds models:
token embedding, then per layer RMSNorm (`SimplifiedLayerNormalization`), q/k/v projections,
`GroupQueryAttention` (com.microsoft: rotary embedding, causal mask, grouped KV heads and the KV
cache in one kernel), the output projection, RMSNorm, SiLU-gated FFN; final norm; LM head.

Inputs: `input_ids` (batch, new tokens), `attention_mask` (batch, past + new; ones, padding on
the right only), `past_key_values.{i}.key` / `.value` (batch, kv heads, past, head dim; length 0
for the first call). Outputs: `logits` (batch, new, vocab), `present.{i}.key` / `.value`. One
graph serves prefill and decode.

Weights keep their quantized form, carried over exactly:
- group-wise int4 / int8 (`weight_only`, RTN or GPTQ, integer or float zero points, any group
  size 16..256 that is a power of two; a short last group is padded) -> `MatMulNBits` with our
  codes, scales and integer zero points; float zero points (`w4-g32-fz`) as a symmetric
  `MatMulNBits` plus the exact correction sum_g (sum of x over group g) * (2^(bits-1) - z_g) s_g, a
  small float MatMul (ORT's own float-zero-point path is ~60x slower); `accuracy_level` 4 (default) lets ONNX Runtime quantize the
  activations to int8 per block for its fastest kernels, 0 keeps them float (exact);
- int8 per channel (`Int8Linear`, and the LM head tied to the int8 embedding) -> `MatMulNBits`
  with 8 bits, the per-row scale repeated per block, zero point 128;
- the int8 token embedding -> an int8 `Gather` times its per-row scale; float layers -> `MatMul`.
Refused with the reason: Hadamard rotations (`rotate`: the run-time rotation of the down
projection's input and around the final norm), architectures other than Llama / Qwen2, sliding-window
attention configs, per-layer sizes after structured pruning.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..core.errors import ConfigError
from ..core.packing import unpack_int4
from ..models.saving import MARKERS, atomic_folder
from .portable import check_portable

MODEL_FILE = "model.onnx"
META_FILE = "slimformer_onnx.json"


class _Graph:
    def __init__(self):
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}_{self.n}"

    def init(self, base: str, arr: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, domain: str | None = None, **attrs) -> list[str]:
        from onnx import helper

        outs = [self.name(op_type) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.name(op_type + "_node"),
                                           domain=domain, **attrs))
        return outs

    def one(self, *a, **k) -> str:
        return self.op(*a, **k)[0]


def _block_for(k: int) -> int:
    for b in (128, 64, 32, 16):
        if k % b == 0:
            return b
    return 32


def _nbits(g: _Graph, x: str, codes: np.ndarray, scales: np.ndarray, zeros, bits: int, block: int, acc: int,
           bias) -> str:
    """MatMulNBits with unsigned codes (N, K), scales (N, blocks), zeros (N, blocks) uint8 / float / None."""
    n, k = codes.shape
    nb = -(-k // block)
    if nb * block != k:
        codes = np.pad(codes, ((0, 0), (0, nb * block - k)))
    q = codes.astype(np.uint8).reshape(n, nb, block)
    packed = (q[..., 0::2] | (q[..., 1::2] << 4)) if bits == 4 else q
    ins = [x, g.init("w_q", packed), g.init("w_scale", scales.astype(np.float32).reshape(-1))]
    correction = None
    if zeros is not None and np.issubdtype(zeros.dtype, np.floating):
        # MatMulNBits with float zero points runs a slow path (60x slower here); (q - z) s =
        # (q - mid) s + (mid - z) s, so run it symmetric (no zero points: mid = 2^(bits-1)) and add
        # the per-group sums of x times (mid - z) s: a (..., groups) x (groups, N) float MatMul
        mid = 2 ** (bits - 1)
        c = ((mid - zeros.astype(np.float64)) * scales.astype(np.float64)).T.astype(np.float32)   # (groups, N)
        xp = x if nb * block == k else g.one("Pad", [x, g.init("pad", np.array([0, 0, 0, 0, 0, nb * block - k], np.int64))])
        shape = g.init("grp_shape", np.array([0, 0, nb, block], np.int64))
        sums = g.one("ReduceSum", [g.one("Reshape", [xp, shape]), g.init("axis", np.array([-1], np.int64))], keepdims=0)
        correction = g.one("MatMul", [sums, g.init("zero_term", c)])
        zeros = None
    if zeros is not None:
        if bits == 4:
            z = zeros.astype(np.uint8)
            if nb % 2:
                z = np.pad(z, ((0, 0), (0, 1)), constant_values=8)
            ins.append(g.init("w_zero", (z[:, 0::2] | (z[:, 1::2] << 4)).reshape(-1)))
        else:
            ins.append(g.init("w_zero", zeros.astype(np.uint8).reshape(-1)))
    y = g.one("MatMulNBits", ins, domain="com.microsoft", K=k, N=n, bits=bits, block_size=block, accuracy_level=acc)
    if correction is not None:
        y = g.one("Add", [y, correction])
    return g.one("Add", [y, g.init("bias", bias)]) if bias is not None else y


def _linear(g: _Graph, x: str, mod, acc: int) -> str:
    from ..quantize.modules import GroupQuantLinear, Int8Linear, Int8TiedHead

    first, second = getattr(mod, "first", None), getattr(mod, "second", None)
    if isinstance(first, torch.nn.Module) and isinstance(second, torch.nn.Module):  # a low-rank pair: two MatMuls
        return _linear(g, _linear(g, x, first, acc), second, acc)
    bias = getattr(mod, "bias", None)
    bias = bias.detach().float().numpy() if isinstance(bias, torch.Tensor) else None
    if isinstance(mod, GroupQuantLinear):
        if mod.input_rotation is not None:
            raise ConfigError("ONNX LM export cannot hold a run-time Hadamard rotation")
        if mod.group_size not in (16, 32, 64, 128, 256):
            raise ConfigError(f"MatMulNBits blocks are powers of two from 16 to 256; this layer has groups of "
                              f"{mod.group_size}")
        codes = (unpack_int4(mod.qweight, mod.in_features) if mod.bits == 4 else mod.qweight).numpy()
        zeros = mod.zeros.numpy()
        return _nbits(g, x, codes, mod.scales.numpy(), zeros, mod.bits, mod.group_size, acc, bias)
    if isinstance(mod, (Int8Linear, Int8TiedHead)):
        src = mod.embedding if isinstance(mod, Int8TiedHead) else mod
        if getattr(src, "input_scale", None) is not None:
            raise ConfigError("ONNX LM export cannot hold a SmoothQuant input scale")
        w = src.weight_int8.to(torch.int16).add(128).to(torch.uint8).numpy()          # (N, K) unsigned
        block = _block_for(w.shape[1])
        nb = -(-w.shape[1] // block)
        scales = np.repeat(src.weight_scale.float().numpy()[:, None], nb, axis=1)
        return _nbits(g, x, w, scales, None, 8, block, acc, bias)
    weight = getattr(mod, "weight", None)
    if not isinstance(mod, torch.nn.Linear) or weight is None:
        raise ConfigError(f"ONNX LM export cannot hold a {type(mod).__name__}")
    y = g.one("MatMul", [x, g.init("w", weight.detach().float().t().numpy())])
    return g.one("Add", [y, g.init("bias", bias)]) if bias is not None else y


def _norm(g: _Graph, x: str, mod, eps: float) -> str:
    return g.one("SimplifiedLayerNormalization", [x, g.init("norm", mod.weight.detach().float().numpy())],
                 axis=-1, epsilon=float(eps), stash_type=1)


def _check(sm):
    from ..adapters import get_adapter

    net = sm.model
    cfg = net.config
    if sm.kind != "causal-lm" or get_adapter(net).name != "llama" or cfg.model_type not in ("llama", "qwen2"):
        raise ConfigError(f"ONNX LM export (KV cache, int4 MatMulNBits) takes Llama / Qwen2 decoders; this is "
                          f"{type(net).__name__} ({getattr(cfg, 'model_type', '?')}); other causal LMs: export_onnx")
    check_portable(sm, "ONNX LM export", "w4-gptq, w4-g32-fz")
    hd = get_adapter(net).layers(net)[0].attention.head_dim
    if hd % 16:
        raise ConfigError(f"ONNX Runtime's GroupQueryAttention needs a head size divisible by 16; this model's is {hd}")
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True) and cfg.model_type != "llama":
        raise ConfigError("ONNX LM export: sliding-window attention configs are not supported")


def lm_graph_supported(sm) -> bool:
    """Whether this is a model export_onnx_lm is for (a Llama / Qwen2 causal LM); it may still
    refuse it with the reason (rotations, head size)."""
    from ..adapters import get_adapter

    try:
        return (sm.kind == "causal-lm" and get_adapter(sm.model).name == "llama"
                and sm.model.config.model_type in ("llama", "qwen2"))
    except Exception:
        return False


def build_lm_graph(sm, accuracy_level: int = 4):
    """The ONNX ModelProto of `sm` (see the module docstring)."""
    from onnx import TensorProto as TP
    from onnx import helper

    from ..adapters import get_adapter
    from ..quantize.modules import Int8Embedding

    _check(sm)
    net = sm.model
    cfg = net.config
    ad = get_adapter(net)
    layers = ad.layers(net)
    heads, kv, hd = layers[0].attention.num_heads, layers[0].attention.num_kv_heads, layers[0].attention.head_dim
    eps = float(getattr(cfg, "rms_norm_eps", 1e-6))
    inv_freq, att_scale = ad.rope(net)
    max_pos = int(getattr(cfg, "max_position_embeddings", 8192))
    t = torch.arange(max_pos, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq.float().cpu())                      # (max_pos, hd / 2)
    g = _Graph()
    cos = g.init("cos_cache", (freqs.cos() * att_scale).numpy())
    sin = g.init("sin_cache", (freqs.sin() * att_scale).numpy())

    # sequence bookkeeping for GroupQueryAttention: per row (valid length - 1), and the total length
    mask32 = g.one("Cast", ["attention_mask"], to=TP.INT32)
    seqlens = g.one("Sub", [g.one("ReduceSum", [mask32, g.init("axis1", np.array([1], np.int64))], keepdims=0),
                            g.init("one", np.array(1, np.int32))])
    total = g.one("Cast", [g.one("Squeeze", [g.one("Shape", ["attention_mask"], start=1, end=2)])], to=TP.INT32)

    emb = ad.embeddings(net)
    if isinstance(emb, Int8Embedding):
        rows = g.one("Cast", [g.one("Gather", [g.init("embed_int8", emb.weight_int8.numpy()), "input_ids"])],
                     to=TP.FLOAT)
        scale = g.one("Gather", [g.init("embed_scale", emb.weight_scale.float().numpy()[:, None]), "input_ids"])
        x = g.one("Mul", [rows, scale])
    elif isinstance(emb, torch.nn.Embedding):
        x = g.one("Gather", [g.init("embed", emb.weight.detach().float().numpy()), "input_ids"])
    else:
        raise ConfigError(f"ONNX LM export cannot hold a {type(emb).__name__} embedding")

    inputs = [helper.make_tensor_value_info("input_ids", TP.INT64, ["batch", "sequence"]),
              helper.make_tensor_value_info("attention_mask", TP.INT64, ["batch", "total_sequence"])]
    outputs = []
    scale = float(getattr(layers[0].attention.module, "scaling", hd ** -0.5))
    for i, L in enumerate(layers):
        a, f = L.attention, L.ffn
        pk, pv = f"past_key_values.{i}.key", f"past_key_values.{i}.value"
        for n in (pk, pv):
            inputs.append(helper.make_tensor_value_info(n, TP.FLOAT, ["batch", kv, "past_sequence", hd]))
        h = _norm(g, x, L.norms["attn"], eps)
        q, k, v = (_linear(g, h, m, accuracy_level) for m in (a.q, a.k, a.v))
        attn, present_k, present_v = g.op("GroupQueryAttention", [q, k, v, pk, pv, seqlens, total, cos, sin], 3,
                                          domain="com.microsoft", num_heads=heads, kv_num_heads=kv, scale=scale,
                                          do_rotary=1, rotary_interleaved=0)
        for src, n in ((present_k, f"present.{i}.key"), (present_v, f"present.{i}.value")):
            g.nodes.append(helper.make_node("Identity", [src], [n], name=g.name("present")))
            outputs.append(helper.make_tensor_value_info(n, TP.FLOAT, ["batch", kv, "total_sequence", hd]))
        x = g.one("Add", [x, _linear(g, attn, a.o, accuracy_level)])
        h = _norm(g, x, L.norms["ffn"], eps)
        gate, up = _linear(g, h, f.gate, accuracy_level), _linear(g, h, f.up, accuracy_level)
        act = g.one("Mul", [gate, g.one("Sigmoid", [gate])])               # SiLU
        x = g.one("Add", [x, _linear(g, g.one("Mul", [act, up]), f.down, accuracy_level)])
    x = _norm(g, x, ad.final_norm(net), eps)
    head = net.get_output_embeddings()
    logits = _linear(g, x, head, accuracy_level)
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="logits_out"))
    outputs.insert(0, helper.make_tensor_value_info("logits", TP.FLOAT, ["batch", "sequence", cfg.vocab_size]))
    graph = helper.make_graph(g.nodes, "slimformer_lm", inputs, outputs, g.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)],
                             ir_version=10)


def export_onnx_lm(sm, out_dir, accuracy_level: int = 4) -> Path:
    """Write `sm` (a Llama-family causal LM, float or quantized by slimformer) as an ONNX Runtime
    folder with a KV cache; `slimformer.load(DIR)` / `load_onnx` run it (evaluate, generate)."""
    import onnx

    from .._version import __version__

    if accuracy_level not in (0, 1, 2, 3, 4):
        raise ConfigError(f"accuracy_level={accuracy_level}; accepted: 0 (float activations, exact) .. 4 (int8)")
    proto = build_lm_graph(sm, accuracy_level)
    from ..adapters import get_adapter

    net = sm.model
    layers = get_adapter(net).layers(net)
    kinds = sorted({n.op_type for n in proto.graph.node if n.op_type in ("MatMulNBits", "MatMul")})

    def write(tmp: Path) -> None:
        onnx.save(proto, str(tmp / MODEL_FILE))
        cfg = net.config.to_dict()
        cfg.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, default=str))
        sm.tokenizer.save_pretrained(tmp)
        meta = {"slimformer_version": __version__, "kind": "causal-lm", "source": sm.source,
                "inputs": [{"name": "input_ids"}, {"name": "attention_mask"}], "outputs": [{"name": "logits"}],
                "kv_cache": {"layers": len(layers), "kv_heads": layers[0].attention.num_kv_heads,
                             "head_dim": layers[0].attention.head_dim},
                "exporter": "slimformer.export.onnx_lm", "accuracy_level": accuracy_level, "matmul_ops": kinds,
                "steps": [{"step": "build_lm_graph", "accuracy_level": accuracy_level}],
                "quantize": next((s.get("method") for s in reversed((sm.meta or {}).get("steps", []))), None)}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
        (tmp / "genai_config.json").write_text(json.dumps(genai_config(sm, layers), indent=2))

    return atomic_folder(out_dir, write, markers=tuple(MARKERS))


def genai_config(sm, layers) -> dict:
    """onnxruntime-genai's genai_config.json for the exported graph (its input / output names, KV
    cache shape, token ids; greedy search by default), so `onnxruntime_genai.Model(DIR)` generates
    with the folder as it is."""
    cfg = sm.model.config
    a = layers[0].attention
    tok = sm.tokenizer
    eos = cfg.eos_token_id if cfg.eos_token_id is not None else getattr(tok, "eos_token_id", None)
    pad = getattr(tok, "pad_token_id", None)
    return {
        "model": {
            "bos_token_id": cfg.bos_token_id if cfg.bos_token_id is not None else getattr(tok, "bos_token_id", None),
            "eos_token_id": eos, "pad_token_id": pad if pad is not None else eos,
            "context_length": cfg.max_position_embeddings, "type": "llama", "vocab_size": cfg.vocab_size,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": MODEL_FILE, "head_size": a.head_dim, "hidden_size": cfg.hidden_size,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
                "num_attention_heads": a.num_heads, "num_hidden_layers": len(layers), "num_key_value_heads": a.num_kv_heads,
            },
        },
        "search": {"do_sample": False, "max_length": min(cfg.max_position_embeddings, 2048), "min_length": 0,
                   "num_beams": 1, "num_return_sequences": 1, "past_present_share_buffer": False,
                   "repetition_penalty": 1.0, "temperature": 1.0, "top_k": 1, "top_p": 1.0, "early_stopping": True,
                   "length_penalty": 1.0, "no_repeat_ngram_size": 0, "diversity_penalty": 0.0},
    }
