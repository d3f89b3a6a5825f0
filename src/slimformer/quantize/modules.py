"""Quantized modules that replace nn.Linear / nn.Embedding. Weights live in buffers in their
stored (packed) form, so safetensors holds exactly what is used; dequantization happens inside
forward. `slimformer_weight_numel` lets parameter counts include the quantized weights."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.kernels import kernel
from ..core.packing import pack_int4, unpack_int4
from ..core.qmath import quantize_per_channel_symmetric, quantize_per_token, quantize_rows_int8


from ..adapters.base import linear_weight  # noqa: E402


def int8_products(qx: torch.Tensor, w_int8: torch.Tensor, op: str = "int8_linear") -> torch.Tensor:
    """sum_k qx[..., k] * w[n, k] for int8 codes qx (..., K) and w (N, K), as float32 (..., N):
    `torch._int_mm` (int32 accumulation) where the kernel choice says so, else a float32 matmul
    of the integer values (exact while partial sums stay below 2^24)."""
    flat = qx.reshape(-1, qx.shape[-1])
    cuda_ok = not qx.is_cuda or (flat.shape[0] > 16 and flat.shape[1] % 8 == 0 and w_int8.shape[0] % 8 == 0)
    if kernel(op) == "int_mm" and cuda_ok:                   # CUDA's _int_mm wants M > 16, K and N % 8
        flat = flat.to(torch.int8)
        return torch._int_mm(flat, w_int8.t()).float().view(*qx.shape[:-1], w_int8.shape[0])
    return F.linear(qx.float(), w_int8.float())


def _version(t: torch.Tensor) -> int:
    """The tensor's in-place version counter (-1 for inference tensors, which have none)."""
    try:
        return t._version
    except RuntimeError:
        return -1


class SmoothedLinear(nn.Linear):
    """A float Linear whose input is divided per channel by s (stored as input_scale = 1/s) and
    whose weight was multiplied by s: the same function, with activation outliers moved into
    the weight (SmoothQuant). An int8 step keeps the input scale."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias)
        self.register_buffer("input_scale", torch.ones(in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x * self.input_scale, self.weight, self.bias)


class Int8Linear(nn.Module):
    """int8 weights (per output channel, or one scale for the tensor) with activations:
    act "token": quantized per token (symmetric int8) at run time (W8A8 dynamic);
    act "static": quantized with one scale fixed at calibration (W8A8 static);
    act None: kept float (int8 weight-only).
    With int8 activations the products run on `torch._int_mm` where the machine has int8 dot
    products (`core.kernels`, op "int8_linear"), else in a float32 matmul of the integer values.
    `input_scale` (SmoothQuant) multiplies the input first when present.
    """

    ROWS = 512  # tokens per chunk of the per-token path (see _per_token)

    def __init__(self, in_features: int, out_features: int, bias: bool, act: str | None = "token",
                 smooth: bool = False):
        super().__init__()
        if act not in ("token", "static", None):
            raise ValueError(f"act={act!r}; accepted: 'token', 'static', None")
        self.in_features, self.out_features, self.act = in_features, out_features, act
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("act_scale", torch.ones(()) if act == "static" else None)
        self.register_buffer("input_scale", torch.ones(in_features) if smooth else None)
        # the bias stays a float parameter (counted as one)
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None
        self.slimformer_weight_numel = in_features * out_features

    @classmethod
    def from_float(cls, mod: nn.Module, act: str | None = "token", per_channel: bool = True,
                   act_scale: float | None = None) -> "Int8Linear":
        w = linear_weight(mod)
        out_f, in_f = w.shape
        smooth = getattr(mod, "input_scale", None) is not None
        m = cls(in_f, out_f, mod.bias is not None, act, smooth)
        if per_channel:
            q, s = quantize_rows_int8(w)  # row chunks: a vocabulary-sized head is never whole in float32
        else:
            w = w.float()
            q, s1 = quantize_per_channel_symmetric(w.reshape(1, -1), 8, axis=0)
            q, s = q.reshape(out_f, in_f), s1.expand(out_f).clone()
        m.weight_int8.copy_(q)
        m.weight_scale.copy_(s)
        if act == "static":
            m.act_scale.fill_(float(act_scale))
        if smooth:
            m.input_scale.copy_(mod.input_scale)
        if mod.bias is not None:
            m.bias.data.copy_(mod.bias.detach().float())
        return m

    @property
    def weight(self) -> torch.Tensor:  # model code sometimes reads .weight (dtype checks, T5)
        return self.weight_int8.float() * self.weight_scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.input_scale is not None:
            x = x * self.input_scale
        if self.act == "token":
            return self._per_token(x)
        if self.act == "static":
            qx = torch.div(x, self.act_scale).round_().clamp_(-127, 127)
            y = int8_products(qx, self.weight_int8).mul_(self.act_scale * self.weight_scale)
        else:
            y = F.linear(x, self.weight_int8.float()).mul_(self.weight_scale)
        return y.add_(self.bias) if self.bias is not None else y

    def _per_token(self, x: torch.Tensor) -> torch.Tensor:
        """W8A8 with per-token activations, ROWS tokens at a time: quantization, integer product and
        scaling of a chunk happen while it is in cache, and the int32 / float intermediates are
        chunk-sized (whole-batch ones cost fresh page-faulting allocations every call: MiniLM's
        384 -> 1536 at 4096 tokens took 41.9 ms whole, 17.8 ms in chunks of 512, torch
        quantize_dynamic 15.2; 1 thread, AVX-512 VNNI EPYC, benchmarks/results/int8_linear_paths.md). Rows are independent, so
        the result is the same as in one piece."""
        flat = x.reshape(-1, self.in_features)
        out = torch.empty(flat.shape[0], self.out_features, dtype=torch.float32, device=x.device)
        for r in range(0, flat.shape[0], self.ROWS):
            qx, sx = quantize_per_token(flat[r:r + self.ROWS], 8)  # (rows, in), (rows, 1)
            y = int8_products(qx, self.weight_int8).mul_(sx).mul_(self.weight_scale)  # fresh tensor: in place
            if self.bias is not None:
                torch.add(y, self.bias, out=out[r:r + self.ROWS])
            else:
                out[r:r + self.ROWS].copy_(y)
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, w=int8, act={self.act}"

    @property
    def kernel_op(self) -> str | None:
        return "int8_linear" if self.act is not None else None


class Int8Embedding(nn.Module):
    """Embedding table stored int8 with one scale per row (token)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.register_buffer("weight_int8", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(num_embeddings))
        self.slimformer_weight_numel = num_embeddings * embedding_dim

    @classmethod
    def from_float(cls, emb: nn.Embedding) -> "Int8Embedding":
        m = cls(emb.num_embeddings, emb.embedding_dim, emb.padding_idx)
        q, s = quantize_rows_int8(emb.weight)
        m.weight_int8.copy_(q)
        m.weight_scale.copy_(s)
        return m

    @property
    def weight(self) -> torch.Tensor:  # some model code reads embed.weight (dtype, device, tying)
        return self.weight_int8.float() * self.weight_scale[:, None]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight_int8).float() * self.weight_scale[ids].unsqueeze(-1)


class Int8TiedHead(nn.Module):
    """An LM head tied to the token embedding, reading the Int8Embedding's own int8 table (per-row
    scales = per-output-channel scales for the head): the tied weight is stored once, as in the
    float model. Weight-only int8 (the table dequantized in a float matmul), or, where the kernel
    choice for "int8_head" is `int_mm`, activations quantized per token and int8 products."""

    kernel_op = "int8_head"

    def __init__(self, embedding: Int8Embedding):
        super().__init__()
        # the very module the model embeds with, held as a plain reference (not a child) so the
        # state dict and save hold its tensors once, under the embedding's name
        object.__setattr__(self, "embedding", embedding)
        self.in_features, self.out_features = embedding.embedding_dim, embedding.num_embeddings
        self.bias = None

    @property
    def weight(self) -> torch.Tensor:
        return self.embedding.weight

    refine_top = 8  # int_mm path: the largest logits recomputed with float activations

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if kernel("int8_head") == "int_mm":
            qx, sx = quantize_per_token(x.float(), 8)
            out = int8_products(qx, self.embedding.weight_int8, "int8_head").mul_(sx).mul_(self.embedding.weight_scale)
            return self._refine(x, out)
        return F.linear(x.float(), self.embedding.weight_int8.float()).mul_(self.embedding.weight_scale)

    def _refine(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The `refine_top` largest int8-activation logits of each token recomputed exactly (float
        activations, the same int8 weights), so greedy decoding picks what the weight-only head picks
        (int8 activations alone flipped near-ties: SmolLM2 w4-g32-fz agreed with the reference kernels
        for 12.2 of 20 greedy tokens, the float head 17.1, float32 vs bf16 17.0) at the int8 speed."""
        k = min(self.refine_top, out.shape[-1])
        top = out.topk(k, dim=-1).indices                                   # (..., k)
        rows = self.embedding.weight_int8[top].float()                      # (..., k, H)
        exact = torch.einsum("...h,...kh->...k", x.float(), rows) * self.embedding.weight_scale[top]
        return out.scatter_(-1, top, exact)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, w=int8 (the embedding table), act=None"


class GroupQuantLinear(nn.Module):
    """Weight-only group-wise int4/int8 (RTN or GPTQ). int4 codes are packed two per byte; the
    weight is dequantized inside forward ((q - zero) * scale per group), then a float matmul.
    Zero points are uint8 codes, or float32 (float_zeros=True) after GPTQ's scale refit."""

    def __init__(self, in_features: int, out_features: int, bias: bool, bits: int, group_size: int,
                 float_zeros: bool = False):
        super().__init__()
        if bits not in (4, 8):
            raise ValueError(f"bits={bits}; accepted: 4, 8")
        self.in_features, self.out_features, self.bits, self.group_size = in_features, out_features, bits, group_size
        n_groups = -(-in_features // group_size)  # the last group may be shorter
        width = (in_features + 1) // 2 if bits == 4 else in_features
        self.register_buffer("qweight", torch.zeros(out_features, width, dtype=torch.uint8))
        self.register_buffer("scales", torch.ones(out_features, n_groups))
        self.float_zeros = float_zeros
        self.register_buffer("zeros", torch.zeros(out_features, n_groups,
                                                  dtype=torch.float32 if float_zeros else torch.uint8))
        # the bias stays a float parameter (counted as one)
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None
        self.slimformer_weight_numel = in_features * out_features
        self.input_rotation = None  # a rotation.Rotation applied to x first (down after rotate=True)

    @classmethod
    def from_codes(cls, mod: nn.Module, q, scales, zeros, bits: int, group_size: int) -> "GroupQuantLinear":
        out_f, in_f = q.shape
        m = cls(in_f, out_f, mod.bias is not None, bits, group_size, float_zeros=zeros.dtype.is_floating_point)
        m.input_rotation = getattr(mod, "input_rotation", None)
        m.qweight.copy_(pack_int4(q) if bits == 4 else q)
        m.scales.copy_(scales)
        m.zeros.copy_(zeros)
        if mod.bias is not None:
            m.bias.data.copy_(mod.bias.detach().float())
        return m

    def dequantized_weight(self) -> torch.Tensor:
        q = unpack_int4(self.qweight, self.in_features) if self.bits == 4 else self.qweight
        out_f, in_f, gs = self.out_features, self.in_features, self.group_size
        if in_f % gs == 0:  # (out, groups, gs): broadcast, no gather
            g = in_f // gs
            w = (q.view(out_f, g, gs).float() - self.zeros.float().unsqueeze(-1)) * self.scales.unsqueeze(-1)
            return w.view(out_f, in_f)
        g_idx = torch.arange(in_f, device=q.device) // gs
        return (q.float() - self.zeros.float()[:, g_idx]) * self.scales[:, g_idx]

    @property
    def weight(self) -> torch.Tensor:  # model code sometimes reads .weight (dtype checks, T5)
        return self.dequantized_weight()

    @property
    def kernel_op(self) -> str | None:
        return "int4_linear" if self.bits == 4 else None

    def int4pack_ok(self) -> bool:
        """Whether torch's CPU int4 kernel can take this layer: 4 bits, groups of 32/64/128/256, an
        output width divisible by 16. An input width the group does not divide (SmolLM2's 576 with
        groups of 128) is padded to whole groups with zero inputs, which add nothing."""
        return (self.bits == 4 and self.group_size in (32, 64, 128, 256) and self.out_features % 16 == 0
                and self.qweight.device.type == "cpu")

    def _int4pack(self):
        """(packed weight, (groups, out, 2) bf16 scales and zeros) for `_weight_int4pack_mm_for_cpu`,
        built once from the stored codes and kept outside the state dict. The kernel computes
        (q - 8) * scale + zero, so zero = (8 - z) * scale reproduces (q - z) * scale."""
        key = tuple((t.data_ptr(), _version(t)) for t in (self.qweight, self.scales, self.zeros))
        cached = getattr(self, "_int4pack_cache", None)
        if cached is None or cached[0] != key:
            q = unpack_int4(self.qweight, self.in_features).to(torch.int32)
            pad = self._int4pack_pad()
            if pad:    # the padded inputs are zeros: any code there contributes nothing
                q = F.pad(q, (0, pad), value=8)
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
            zero = (8.0 - self.zeros.float()) * self.scales
            sz = torch.stack([self.scales.t(), zero.t()], dim=-1).contiguous().to(torch.bfloat16)  # (G, out, 2)
            cached = (key, packed, sz)
            object.__setattr__(self, "_int4pack_cache", cached)
        return cached[1], cached[2]

    def _int4pack_pad(self) -> int:
        return -self.in_features % self.group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_rotation is not None:
            x = self.input_rotation(x)
        if self.bits == 4 and kernel("int4_linear") == "int4pack" and self.int4pack_ok() and x.device.type == "cpu":
            packed, sz = self._int4pack()
            flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
            if self._int4pack_pad():
                flat = F.pad(flat, (0, self._int4pack_pad()))
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, packed, self.group_size, sz)
            y = y.to(x.dtype).view(*x.shape[:-1], self.out_features)
            return y + self.bias.to(x.dtype) if self.bias is not None else y
        return F.linear(x, self.dequantized_weight().to(x.dtype), self.bias)

    def extra_repr(self) -> str:
        z = ", float zeros" if self.float_zeros else ""
        return f"in={self.in_features}, out={self.out_features}, int{self.bits}, group={self.group_size}{z}"
