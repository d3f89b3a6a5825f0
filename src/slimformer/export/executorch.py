"""Export to ExecuTorch (one .pte file, lowered to the XNNPACK backend) and run the file with
ExecuTorch's Python runtime, as a phone would run it.

    from slimformer.export import export_executorch
    path = export_executorch(model, "out/minilm.pte", quantize="int8")
    et = slimformer.load(path)                 # quacks like SlimModel: embed(), tokenize(), model(**enc)

What goes in: an encoder (embedding / classification: MiniLM and its slimformer students) or a
Llama-family causal LM with a KV cache (transformers' StaticCache, held in the program as mutable
buffers; `generate()` runs one prefill call then one call per token). Quantization is torchao's,
as ExecuTorch documents it for XNNPACK: `int8` = int8 dynamic activations x int8 weights per output
channel for every linear layer (Int8DynamicActivationIntxWeightConfig); `int4` = the same with
4-bit weights in groups of `group_size` (8da4w); the token-embedding table in both is weight-only
(IntxWeightOnlyConfig, 4-bit in groups of 32 by default, `embedding_bits=8`: per row).

Made for XNNPACK 1.5 (measured on MiniLM, int8, 2 threads): eager attention instead of the SDPA
path (transformers' SDPA mask ops left 61 fragments, half the speed), for encoders with the heads
folded into the batch and a (B, 1, 1, S) padding bias (_bmm_attention: the (B, H, S, S) score
reshapes of eager attention hold two symbolic sizes and ran outside XNNPACK, two copies per layer),
LayerNorm written as mean/sub/rsqrt on a 4D view (XNNPACK has no layer_norm), reshapes with one
symbolic size written with -1 (XNNPACK takes no symbolic reshape), and a fixed batch (`batch_size`,
default 1: a phone runs one input at a time) with the sequence length dynamic up to `max_seq_len`.
The encoder-fast student lowers to one XNNPACK program; only the embedding lookups and the mask run
outside it.

Beside FILE.pte: FILE.pte.json (what the runtime needs: kind, inputs, pooling, the model config,
shapes, quantization) and the tokenizer files. Needs the `executorch` extra:
pip install 'slimformer[executorch]'."""
from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import logging
import os
import re
import tempfile
from pathlib import Path

import torch
from torch import nn

from ..core.errors import ConfigError, ModelLoadError, SlimformerError
from ..models.wrapper import ArtifactText, Pooling

_log = logging.getLogger(__name__)
PTE_QUANTIZE = ("int8", "int4")
META_SUFFIX = ".json"  # model.pte -> model.pte.json
MARK = "slimformer-executorch"
KINDS = ("embedding", "classification", "causal-lm")
# what tokenizers' save_pretrained may write beside the .pte (checked before a run writes there)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                   "merges.txt", "tokenizer.model", "chat_template.jinja")


def executorch_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("executorch", "torchao"))


def require_executorch() -> None:
    if not executorch_available():
        raise SlimformerError("the ExecuTorch export needs executorch (and torchao): pip install 'slimformer[executorch]'")


def meta_path(pte: Path) -> Path:
    return Path(str(pte) + META_SUFFIX)


def written_by_slimformer(pte: Path) -> bool:
    """Whether FILE.pte has slimformer's description beside it (the only kind of .pte it overwrites)."""
    try:
        return json.loads(meta_path(pte).read_text()).get("format") == MARK
    except (OSError, ValueError):
        return False


def foreign_tokenizer_files(folder: Path) -> list[str]:
    """Tokenizer files already in `folder` that a .pte written there would put its own over: any of
    TOKENIZER_FILES, unless the folder holds a .pte slimformer wrote (then they are its own)."""
    theirs = [f for f in TOKENIZER_FILES if (folder / f).exists()]
    return [] if not theirs or any(written_by_slimformer(p) for p in folder.glob("*.pte")) else theirs


def _four_d(x):
    """(..., H) -> (..., 1, H): XNNPACK averages only a 4D tensor over its last two dimensions. A view,
    not unsqueeze: XNNPACK takes no unsqueeze of a symbolic size, and the view's one symbolic size
    becomes -1 (_symbolic_views_to_minus_one)."""
    return x.view(*x.shape[:-1], 1, x.shape[-1])


class DecomposedLayerNorm(nn.Module):
    """LayerNorm over the last dimension of a 3D input as mean / sub / mul / rsqrt (ops XNNPACK runs;
    it has no layer_norm). Same parameters, same result to float rounding."""

    def __init__(self, ln: nn.LayerNorm):
        super().__init__()
        self.weight, self.bias, self.eps = ln.weight, ln.bias, ln.eps

    def forward(self, x):
        x4 = _four_d(x)
        d = x4 - x4.mean((-2, -1), keepdim=True)
        y = d * torch.rsqrt((d * d).mean((-2, -1), keepdim=True) + self.eps)
        if self.weight is not None:
            y = y * self.weight
        y = y + self.bias if self.bias is not None else y
        return y.flatten(-2)


class DecomposedRMSNorm(nn.Module):
    """An RMSNorm (Llama's, Gemma's with its weight offset) as mul / mean / rsqrt on a 4D view, for
    the same reason as DecomposedLayerNorm. `offset`: the adapter's norm_weight_offset."""

    def __init__(self, norm: nn.Module, offset: float = 0.0):
        super().__init__()
        self.weight, self.offset = norm.weight, float(offset)
        self.eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))

    def forward(self, x):
        x4 = _four_d(x.float())
        y = x4 * torch.rsqrt((x4 * x4).mean((-2, -1), keepdim=True) + self.eps)
        return (y.flatten(-2) * (self.weight.float() + self.offset)).to(x.dtype)


ATTENTION = "slimformer_xnnpack"  # the attention implementation encoders are exported with


def _padding_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None, attention_mask=None,
                  dtype=torch.float32, **kwargs):
    """transformers' mask for ATTENTION: a plain bidirectional mask over a 2D padding mask (an encoder's)
    as an additive (batch, 1, 1, keys) bias, the same for every query row; anything else as the eager mask."""
    from transformers.masking_utils import bidirectional_mask_function, eager_mask

    if (mask_function is bidirectional_mask_function and q_offset == 0 and kv_offset == 0
            and attention_mask is not None and attention_mask.ndim == 2):
        keep = attention_mask[:, None, None, :kv_length].to(torch.bool)
        return torch.where(keep, torch.zeros((), dtype=dtype), torch.full((), torch.finfo(dtype).min, dtype=dtype))
    return eager_mask(batch_size, q_length, kv_length, q_offset, kv_offset, mask_function=mask_function,
                      attention_mask=attention_mask, dtype=dtype, **kwargs)


def _bmm_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Eager attention with the heads folded into the batch ((B*H, S, D) bmm's), so that no reshape
    holds two symbolic sizes: XNNPACK runs a reshape with at most one, and transformers' eager
    attention reshapes the (B, H, S, S) scores (two per layer left outside XNNPACK, each a copy
    through ExecuTorch's portable kernels). Takes a (B, 1, 1, S) mask (_padding_mask) or a full
    (B, 1, S, S) one. Returns (B, S, H, D) and no attention weights."""
    b, h, s, d = query.shape
    if key.shape[1] != h:  # grouped-query attention: each key/value head serves h / kv heads
        key, value = (t.repeat_interleave(h // t.shape[1], dim=1) for t in (key, value))
    sk = key.shape[2]
    scaling = d ** -0.5 if scaling is None else scaling
    q = (query * scaling).reshape(b * h, s, d)
    scores = torch.bmm(q, key.reshape(b * h, sk, d).transpose(1, 2))
    if attention_mask is not None:
        if attention_mask.shape[-2] == 1:
            scores = scores + attention_mask.expand(b, h, 1, sk).reshape(b * h, 1, sk)
        else:  # two symbolic sizes: correct, but this reshape runs outside XNNPACK
            scores = (scores.view(b, h, s, sk) + attention_mask).reshape(b * h, s, sk)
    probs = torch.softmax(scores, dim=-1)
    out = torch.bmm(probs, value.reshape(b * h, sk, value.shape[-1]))
    return out.view(b, h, s, -1).transpose(1, 2).contiguous(), None


def _use_bmm_attention(model: nn.Module) -> bool:
    """Switch a transformers model to _bmm_attention (registered with transformers once); False when
    the model has no attention implementation to choose (it keeps its own)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTENTION, _bmm_attention)
    AttentionMaskInterface.register(ATTENTION, _padding_mask)
    try:
        model.set_attn_implementation(ATTENTION)
    except Exception:
        return False
    return True


def _rms_norms(model: nn.Module) -> list[tuple[nn.Module, float]]:
    """(norm, weight offset) for each RMSNorm the model's adapter names (none for other models)."""
    from ..adapters import get_adapter

    try:
        ad = get_adapter(model)
        norms = [n for info in ad.layers(model) for n in info.norms.values()] + [ad.final_norm(model)]
    except Exception:  # an architecture without an adapter: its norms stay as they are
        return []
    seen, out = set(), []
    for n in norms:
        if n is not None and id(n) not in seen and "rmsnorm" in type(n).__name__.lower() and hasattr(n, "weight"):
            seen.add(id(n))
            out.append((n, getattr(ad, "norm_weight_offset", 0.0)))
    return out


def _prepare(model: nn.Module, bmm_attention: bool = False) -> nn.Module:
    """The model as XNNPACK lowers it best (module docstring): eager attention (_bmm_attention with
    `bmm_attention`, for encoders), LayerNorm and the adapter's RMSNorms decomposed, embeddings without
    padding_idx (it only matters for gradients; torchao's quantized embedding pattern does not match
    with it)."""
    from ..models.surgery import replace_module

    if hasattr(model, "set_attn_implementation") and not (bmm_attention and _use_bmm_attention(model)):
        with contextlib.suppress(Exception):  # a model without the choice keeps its own
            model.set_attn_implementation("eager")
    for norm, offset in _rms_norms(model):
        replace_module(model, norm, DecomposedRMSNorm(norm, offset))
    for m in list(model.modules()):
        if type(m) is nn.LayerNorm and len(m.normalized_shape) == 1:
            replace_module(model, m, DecomposedLayerNorm(m))
        elif isinstance(m, nn.Embedding):
            m.padding_idx = None
    return model


def _quantize(model: nn.Module, quantize: str | None, group_size: int, embedding_bits: int) -> None:
    if quantize is None:
        return
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup

    emb = (IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32)) if embedding_bits == 4
           else IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0)))
    quantize_(model, emb, filter_fn=lambda m, _: isinstance(m, nn.Embedding) and m.embedding_dim % 32 == 0)
    lin = (Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0))
           if quantize == "int8" else
           Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(group_size)))
    quantize_(model, lin, filter_fn=lambda m, _: type(m) is nn.Linear
              and (quantize == "int8" or m.in_features % group_size == 0))


class _Encoder(nn.Module):
    """forward(input_ids, attention_mask[, token_type_ids]) -> last_hidden_state (embedding) or logits."""

    def __init__(self, model: nn.Module, names: list[str], kind: str):
        super().__init__()
        self.model, self.names, self.kind = model, names, kind

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        out = self.model(**{k: given[k] for k in self.names})
        return out.last_hidden_state if self.kind == "embedding" else out.logits


def _symbolic_views_to_minus_one(gm: torch.fx.GraphModule):
    """XNNPACK takes a reshape with at most one inferred (-1) size and no symbolic one: a view whose
    result has exactly one symbolic size (the sequence length) is written with its concrete sizes and
    -1 there."""
    from executorch.exir.dialects._ops import ops as exir_ops
    from torch.fx.passes.infra.pass_base import PassResult

    changed = False
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target != exir_ops.edge.aten.view_copy.default:
            continue
        val = node.meta.get("val")
        if val is None or all(isinstance(d, int) for d in node.args[1]):
            continue
        sizes = [d if isinstance(d, int) else None for d in (_concrete(x) for x in val.shape)]
        if sizes.count(None) == 1:
            node.args = (node.args[0], [-1 if d is None else d for d in sizes], *node.args[2:])
            changed = True
    if changed:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return PassResult(gm, changed)


def _concrete(d):
    if isinstance(d, int):
        return d
    return d.node.maybe_as_int() if isinstance(d, torch.SymInt) else None  # None: a symbolic size


def _lower(ep, tag: str):
    """ExportedProgram -> ExecuTorch program bytes, XNNPACK-delegated."""
    import executorch.kernels.quantized  # noqa: F401  (registers the quantized embedding ops' out variants)
    from executorch.backends.xnnpack._passes.remove_noop_expand_copy_pass import RemoveNoopExpandCopyPass
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower

    edge = to_edge_transform_and_lower(ep, transform_passes=[RemoveNoopExpandCopyPass(), _symbolic_views_to_minus_one],
                                       partitioner=[XnnpackPartitioner()])
    prog = edge.to_executorch(ExecutorchBackendConfig(extract_delegate_segments=True, do_quant_fusion_and_const_prop=True))
    plan = prog.executorch_program.execution_plan[0]
    # what the runtime runs with its own kernels, after to_executorch's fusions (a dequantize + embedding pair is
    # one quantized_decomposed::embedding_4bit by then)
    outside = sorted({f"{o.name}.{o.overload}" if o.overload else o.name for o in plan.operators})
    delegated = len(plan.delegates)
    _log.info("%s: %d XNNPACK partitions; outside them: %s", tag, delegated, ", ".join(outside) or "nothing")
    return prog.buffer, {"xnnpack_partitions": delegated, "ops_outside_xnnpack": outside}


_OP = re.compile(r"\b((?:aten|torchao|quantized_decomposed|prims|[a-z_]+)::[A-Za-z0-9_.]+|aten\.[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?)")


def lowering_error(source: str, e: BaseException) -> SlimformerError:
    """One line naming the operator ExecuTorch could not take (when the error names one) and what
    runs the model instead."""
    text = " ".join(str(e).split())
    m = _OP.search(text)
    what = f"operator {m.group(1)}" if m else type(e).__name__
    return SlimformerError(f"ExecuTorch cannot lower {source}: {what} ({text[:160]}); export it with --onnx "
                           "(ONNX Runtime / OpenVINO) or --gguf (llama.cpp, Llama-family LMs) instead")


def _check(sm, quantize, group_size, embedding_bits, batch_size, max_seq_len) -> None:
    if sm.kind not in KINDS:
        raise ConfigError(f"export_executorch: a {sm.kind} model cannot be exported to ExecuTorch yet; accepted kinds: "
                          f"{', '.join(KINDS)} (export it with --onnx instead)")
    if quantize is not None and quantize not in PTE_QUANTIZE:
        raise ConfigError(f"export_executorch: quantize={quantize!r}; accepted: none, {', '.join(PTE_QUANTIZE)}")
    if group_size not in (32, 64, 128, 256):
        raise ConfigError(f"export_executorch: group_size={group_size!r}; accepted: 32, 64, 128, 256")
    if embedding_bits not in (4, 8):
        raise ConfigError(f"export_executorch: embedding_bits={embedding_bits!r}; accepted: 4, 8")
    for name, v, hi in (("batch_size", batch_size, 1024), ("max_seq_len", max_seq_len, 32768)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= hi):
            raise ConfigError(f"export_executorch: {name}={v!r}; accepted: an integer in 1..{hi}")
    from ..models.surgery import is_linear

    odd = sorted({type(m).__name__ for m in sm.model.modules()
                  if not list(m.children()) and "linear" in type(m).__name__.lower() and not is_linear(m)})
    if odd:
        raise ConfigError(f"export_executorch: the model holds {', '.join(odd)} layers (quantized by slimformer); "
                          "export the float model with --quantize int8|int4 (torchao's XNNPACK quantization), or "
                          "this one with --onnx / --gguf")


@torch.no_grad()
def export_executorch(sm, path, quantize: str | None = None, batch_size: int = 1, max_seq_len: int | None = None,
                      group_size: int = 32, embedding_bits: int = 4) -> Path:
    """Write `sm` as PATH (.pte) for ExecuTorch's XNNPACK backend, with PATH.json and the tokenizer
    files beside it (module docstring). quantize: None (float32), "int8" or "int4". batch_size: the
    program's fixed batch. max_seq_len: the longest input (encoders; default the pooling's max
    length, else 512) or the KV cache's length (LMs; default 1024). group_size: int4 weights per
    scale. embedding_bits: the quantized token-embedding table, 4 (groups of 32) or 8 (per row).
    Nothing is left half-written: the files appear together when everything has been lowered."""
    require_executorch()
    _check(sm, quantize, group_size, embedding_bits, batch_size, max_seq_len)
    path = Path(path).expanduser()
    if path.suffix != ".pte":
        raise ConfigError(f"export_executorch: {path} should end in .pte (ExecuTorch's program file)")
    if path.is_dir():
        raise ConfigError(f"export_executorch: {path} is a folder; give a file name ending in .pte")
    if path.exists() and not written_by_slimformer(path):
        raise SlimformerError(f"{path} exists and was not written by slimformer; give another --out (it is left alone)")
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in sm.model.parameters() if p.is_floating_point()})
    # XNNPACK computes in float32 here: a bf16 / fp16 model (encoder-fast's bf16 student) is cast up
    model = copy.deepcopy(sm.model).eval().requires_grad_(False)
    if dtypes != ["float32"]:
        nn.Module.float(model)  # (transformers' own .float() refuses a model it loaded from a GGUF file)
    meta = {"format": MARK, "kind": sm.kind, "source": sm.source, "quantize": quantize or "none", "source_dtypes": dtypes,
            "batch_size": batch_size, "params": sm.num_params(), "config": sm.model.config.to_dict(),
            "pooling": vars(sm.pooling) if getattr(sm, "pooling", None) else None,
            "source_meta": {k: v for k, v in getattr(sm, "meta", {}).items() if k in ("steps", "recipe")}}
    if quantize == "int4":
        meta["group_size"] = group_size
    if quantize:
        meta["embedding_bits"] = embedding_bits
    try:
        if sm.kind == "causal-lm":
            buf, info = _export_lm(model, sm, quantize, group_size, embedding_bits, batch_size, max_seq_len or 1024, meta)
        else:
            buf, info = _export_encoder(model, sm, quantize, group_size, embedding_bits, batch_size, max_seq_len, meta)
    except SlimformerError:
        raise
    except Exception as e:  # torch.export / ExecuTorch raise many types; the user gets one line
        raise lowering_error(sm.source, e) from e
    meta.update(info)
    _write_together(path, buf, meta, sm.tokenizer)
    return path


def _export_encoder(model, sm, quantize, group_size, embedding_bits, batch_size, max_seq_len, meta):
    from .options import input_names

    names = input_names(sm)
    limit = max_seq_len or (sm.pooling.max_seq_length if getattr(sm, "pooling", None) else None) or 512
    limit = min(limit, getattr(sm.model.config, "max_position_embeddings", limit) or limit)
    wrapper = _Encoder(_prepare(model, bmm_attention=True), names, sm.kind).eval()
    _quantize(wrapper, quantize, group_size, embedding_bits)
    enc = sm.tokenize(["an example sentence that is long enough to be typical"] * batch_size)
    example = {k: enc[k][:, : min(16, limit)].contiguous() for k in names}
    seq = torch.export.Dim("seq", min=2, max=limit)
    ep = torch.export.export(wrapper, (), example, dynamic_shapes={k: {1: seq} for k in names})
    buf, info = _lower(ep, sm.source)
    meta.update({"inputs": names, "max_seq_len": limit})
    return buf, info


def _export_lm(model, sm, quantize, group_size, embedding_bits, batch_size, max_cache_len, meta):
    from transformers.integrations.executorch import TorchExportableModuleWithStaticCache

    if batch_size != 1:
        raise ConfigError("export_executorch: an LM is exported with batch_size 1 (one sequence and its KV cache)")
    limit = min(max_cache_len, getattr(sm.model.config, "max_position_embeddings", max_cache_len) or max_cache_len)
    model = _prepare(model)
    _quantize(model, quantize, group_size, embedding_bits)
    model.generation_config.cache_implementation = "static"
    model.generation_config.use_cache = True
    wrapper = TorchExportableModuleWithStaticCache(model, batch_size=1, max_cache_len=limit)
    seq = torch.export.Dim("seq", max=limit - 1)
    ids = torch.tensor([[1, 2, 3, 4]], dtype=torch.long)
    ep = torch.export.export(wrapper, (), {"input_ids": ids, "cache_position": torch.arange(4)},
                             dynamic_shapes={"input_ids": {1: seq}, "cache_position": {0: seq}}, strict=True)
    buf, info = _lower(ep, sm.source)
    meta.update({"inputs": ["input_ids", "cache_position"], "max_seq_len": limit, "kv_cache": True})
    return buf, info


def _write_together(path: Path, buf, meta: dict, tokenizer) -> None:
    """PATH, PATH.json and the tokenizer files, written to temporary names first and moved into place
    last (a failure leaves the user's folder as it was). A different tokenizer already beside PATH is
    refused rather than replaced."""
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".slimformer-tok-") as tmp:
        tokenizer.save_pretrained(tmp)
        files = [f for f in Path(tmp).iterdir() if f.is_file()]
        for f in files:
            old = folder / f.name
            if old.exists() and old.read_bytes() != f.read_bytes() and f.name != "chat_template.jinja":
                if not any(written_by_slimformer(p) for p in folder.glob("*.pte")):
                    raise SlimformerError(f"{old} exists with other contents; give --out in another folder "
                                          "(the tokenizer files go beside the .pte)")
        meta["tokenizer_files"] = sorted(f.name for f in files)
        tmp_pte, tmp_meta = path.with_name(f".{path.name}.tmp"), path.with_name(f".{path.name}.json.tmp")
        try:
            with open(tmp_pte, "wb") as fh:
                buf.write_to_file(fh) if hasattr(buf, "write_to_file") else fh.write(buf)
            tmp_meta.write_text(json.dumps(meta, indent=1, default=str))
            for f in files:
                os.replace(f, folder / f.name)
            os.replace(tmp_meta, meta_path(path))
            os.replace(tmp_pte, path)
        finally:
            for t in (tmp_pte, tmp_meta):
                t.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------- runtime


def set_threads(threads: int | None) -> None:
    """ExecuTorch's (process-wide) XNNPACK thread pool size."""
    if threads:
        from executorch.extension.pybindings import portable_lib

        if portable_lib._threadpool_get_thread_count() != int(threads):
            portable_lib._unsafe_reset_threadpool(int(threads))


class _PteModule:
    """Callable like a transformers model on the program: model(**enc) -> ModelOutput. Encoders:
    the batch is cut into the program's fixed batch (padded with a copy of the last row), each
    piece trimmed to its longest real input. LMs: a prefill from position 0 (one row at a time)."""

    def __init__(self, method, meta: dict, config):
        self.method, self.meta, self.config = method, meta, config
        self.kind, self.names, self.batch = meta["kind"], meta["inputs"], int(meta.get("batch_size", 1))

    def eval(self):
        return self

    def __call__(self, input_ids=None, attention_mask=None, **kw):
        from transformers.modeling_outputs import BaseModelOutput, CausalLMOutput, SequenceClassifierOutput

        ids = torch.as_tensor(input_ids, dtype=torch.long)
        mask = torch.ones_like(ids) if attention_mask is None else torch.as_tensor(attention_mask, dtype=torch.long)
        if self.kind == "causal-lm":  # one row at a time, its padding left out; padded positions get zeros
            rows = [self.prefill(ids[i : i + 1][:, mask[i].bool()]) for i in range(len(ids))]
            logits = rows[0].new_zeros(len(ids), ids.shape[1], rows[0].shape[-1])
            for i, r in enumerate(rows):
                logits[i, mask[i].bool()] = r[0]
            return CausalLMOutput(logits=logits)
        given = {"input_ids": ids, "attention_mask": mask, **kw}
        cols = {k: torch.as_tensor(given[k], dtype=torch.long) if given.get(k) is not None else torch.zeros_like(ids)
                for k in self.names}
        if ids.shape[1] > self.meta["max_seq_len"]:
            raise ValueError(f"inputs of {ids.shape[1]} tokens; this .pte takes at most {self.meta['max_seq_len']} "
                             "(export it with a larger max_seq_len)")
        outs = []
        for s in range(0, len(ids), self.batch):
            rows = list(range(s, min(s + self.batch, len(ids))))
            n = len(rows)
            rows += [rows[-1]] * (self.batch - n)
            width = max(2, int(mask[rows].sum(1).max()))
            out = self.method.execute([cols[k][rows, :width].contiguous() for k in self.names])[0][:n]
            if self.kind == "embedding" and width < ids.shape[1]:
                out = torch.nn.functional.pad(out, (0, 0, 0, ids.shape[1] - width))
            outs.append(out)
        out = torch.cat(outs)
        return BaseModelOutput(last_hidden_state=out) if self.kind == "embedding" else SequenceClassifierOutput(logits=out)

    forward = __call__

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        if t >= self.meta["max_seq_len"]:
            raise ValueError(f"{t} tokens; this .pte's KV cache holds {self.meta['max_seq_len']} (export it with a larger max_seq_len)")
        return self.method.execute([ids.contiguous(), torch.arange(t)])[0]


class ExecuTorchSlimModel(ArtifactText):
    """A .pte written by export_executorch, run by ExecuTorch's Python runtime (XNNPACK). Quacks like
    SlimModel for evaluation: kind, tokenizer, pooling, source, meta, config, tokenize(), embed(),
    model(**enc), num_params(), disk_bytes(), and for LMs generate() / decode_seconds()."""

    def __init__(self, path, threads: int | None = None):
        require_executorch()
        import executorch.kernels.quantized  # noqa: F401  (the quantized embedding kernels, into the runtime's registry)
        import transformers as tf
        from executorch.runtime import Runtime

        path = Path(path).expanduser()
        if not written_by_slimformer(path):
            raise ModelLoadError(f"{path}: no {meta_path(path).name} beside it; not a .pte written by slimformer's "
                                 "export_executorch (slimformer needs its tokenizer and description)")
        self.path, self.meta = path, json.loads(meta_path(path).read_text())
        self.kind, self.source = self.meta["kind"], str(path)
        p = self.meta.get("pooling")
        self.pooling = Pooling(**p) if p else (Pooling() if self.kind == "embedding" else None)
        cfg = dict(self.meta["config"])
        try:
            self.config = tf.AutoConfig.for_model(cfg.pop("model_type"), **cfg)
            self.tokenizer = tf.AutoTokenizer.from_pretrained(path.parent)
        except (OSError, ValueError, KeyError) as e:
            raise ModelLoadError(f"{path}: could not read its config or the tokenizer beside it ({e})") from None
        if self.kind == "causal-lm" and getattr(self.tokenizer, "pad_token", None) is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        set_threads(threads)
        try:
            self.program = Runtime.get().load_program(str(path))
            method = self.program.load_method("forward")
        except Exception as e:  # the runtime raises RuntimeError with its own text
            raise ModelLoadError(f"{path}: ExecuTorch could not load it ({type(e).__name__}: {str(e)[:200]})") from None
        self.model = _PteModule(method, self.meta, self.config)

    def __call__(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def num_params(self) -> int:
        return int(self.meta.get("params", 0))

    def disk_bytes(self) -> dict:
        files = [self.path, meta_path(self.path)] + [self.path.parent / f for f in self.meta.get("tokenizer_files", [])]
        return {"bytes": self.path.stat().st_size, "bytes_total": sum(f.stat().st_size for f in files if f.exists())}

    def memory_bytes(self) -> int:
        return self.path.stat().st_size

    def companions(self, dest: Path) -> dict[Path, Path]:
        """{where: from} for the files that go beside this .pte when it is copied to `dest`: its
        description (DEST.json) and the tokenizer files."""
        dest = Path(dest)
        out = {meta_path(dest): meta_path(self.path)}
        out.update({dest.parent / f: self.path.parent / f for f in self.meta.get("tokenizer_files", [])})
        return out

    def _greedy(self, input_ids, steps: int) -> tuple[torch.Tensor, float]:
        import time

        if not self.meta.get("kv_cache"):
            raise ValueError("generate() needs an LM exported with its KV cache")
        ids = torch.as_tensor(input_ids, dtype=torch.long)
        if ids.shape[0] != 1:  # the program holds one sequence's cache: rows one after another, times added
            rows = [self._greedy(ids[i : i + 1], steps) for i in range(len(ids))]
            return torch.cat([r[0] for r in rows]), sum(r[1] for r in rows)
        t = ids.shape[1]
        if t + steps > self.meta["max_seq_len"]:
            raise ValueError(f"{t} + {steps} tokens; this .pte's KV cache holds {self.meta['max_seq_len']}")
        logits = self.model.prefill(ids)
        t0, out = time.perf_counter(), [ids]
        for i in range(steps):
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            out.append(nxt)
            logits = self.model.method.execute([nxt, torch.tensor([t + i])])[0]
        return torch.cat(out, 1), time.perf_counter() - t0

    @torch.inference_mode()
    def generate(self, input_ids, max_new_tokens: int = 32, **_) -> torch.Tensor:
        """Greedy decoding through the program's KV cache: one prefill call, then one call per token."""
        return self._greedy(input_ids, max_new_tokens)[0]

    def decode_seconds(self, prompt, steps: int) -> float:
        return self._greedy(prompt, steps)[1]

    def __repr__(self) -> str:
        return f"ExecuTorchSlimModel({self.source!r}, kind={self.kind!r}, quantize={self.meta.get('quantize')!r})"


def load_executorch(path, threads: int | None = None) -> ExecuTorchSlimModel:
    return ExecuTorchSlimModel(path, threads=threads)


def _load_file(path, kind=None) -> ExecuTorchSlimModel:
    """`slimformer.load(FILE.pte)`."""
    m = ExecuTorchSlimModel(path)
    if kind is not None and kind != m.kind:
        raise ModelLoadError(f"{path}: an exported {m.kind} model, not {kind}")
    return m
