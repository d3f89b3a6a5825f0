"""Hadamard rotation before weight-only quantization (incoherence processing, as in QuaRot,
Ashkboos et al. 2024, and SpinQuant, Liu et al. 2024, here for weight-only int4/int8).

An orthogonal R leaves a Linear layer's function unchanged when its input is rotated and its
weight with it: (x R)(W R)^T = x W^T. A random-sign Hadamard R spreads each weight row's
outliers over all inputs, so a group's range is set by many weights instead of a few large ones
and rounding costs less. Where R is applied (pre-norm RMSNorm decoders, Llama family):

* residual stream (folded, no run-time cost): each pre-norm's weight is folded into the
  q/k/v (resp. gate/up) input columns and set to 1 (RMSNorm with weight 1 commutes with R),
  then every layer reading the stream gets W R, every layer writing it (o, down) R^T W, and the
  token embedding table E R (a tied LM head reads that same table). The final norm is wrapped
  (`RotatedNorm`: x -> norm(x R^T) R), one small transform per token for the whole model, so a
  tied head keeps sharing the table;
* per attention head, between v and o (folded): v's output rows and o's input columns of each
  head are rotated by one head_dim Hadamard (under GQA the same one for every head);
* the input of down (online): down's input is act(gate) * up, which no fold can rotate, so
  `RotatedLinear` / GroupQuantLinear apply a fast Hadamard (Kronecker factors, O(n * sum of
  factors)) to it at run time and down's weight is stored as W R.

The float model computes the same function (checked on random tokens; a model it would change
is rejected). Hadamard sizes: 2^k times any product of 12s and 20s (576 = 12*12*4,
1536 = 12*128, 960 = 20*12*4); the folded rotations of other sizes use a seeded random
orthogonal matrix instead, and down gets no online rotation there.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..adapters import get_adapter
from ..core.errors import ConfigError, SlimformerError
from ..adapters.base import norm_eps
from ..models.activations import model_output
from ..models.surgery import set_module

_PALEY = {12: 11, 20: 19}  # Hadamard orders from Paley's construction I (q prime, q = 3 mod 4)


def hadamard_factors(n: int) -> list[int] | None:
    """Kronecker factors (12s, 20s, then powers of two up to 128) of a Hadamard matrix of
    order n, or None if this module cannot build one."""
    if n >= 1 and n & (n - 1) == 0:
        out, rest = [], n
        while rest > 1:
            out.append(min(rest, 128))
            rest //= out[-1]
        return out or [1]
    for m in _PALEY:
        if n % m == 0:
            sub = hadamard_factors(n // m)
            if sub is not None:
                return [m] + [f for f in sub if f != 1]
    return None


def _paley(order: int) -> Tensor:
    q = _PALEY[order]
    chi = [0] + [1 if pow(a, (q - 1) // 2, q) == 1 else -1 for a in range(1, q)]
    S = torch.zeros(order, order, dtype=torch.float64)
    S[0, 1:] = 1
    S[1:, 0] = -1
    S[1:, 1:] = torch.tensor([[chi[(j - i) % q] for j in range(q)] for i in range(q)], dtype=torch.float64)
    return torch.eye(order, dtype=torch.float64) + S


def _sylvester(n: int) -> Tensor:
    H = torch.ones(1, 1, dtype=torch.float64)
    while H.shape[0] < n:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    return H


def _factor(f: int) -> Tensor:
    """Orthonormal Hadamard factor of order f (float64)."""
    H = _paley(f) if f in _PALEY else _sylvester(f)
    return H / math.sqrt(f)


def _kron(x: Tensor, sizes: list[int], mats: list[Tensor]) -> Tensor:
    """x @ kron(mats[0], mats[1], ...) without forming it: each factor multiplies its own axis
    of x viewed as (..., sizes[0], sizes[1], ...)."""
    shape = x.shape
    y = x.reshape(-1, *sizes)
    for i, m in enumerate(mats):
        y = torch.movedim(torch.movedim(y, i + 1, -1) @ m.to(x.dtype), -1, i + 1)
    return y.reshape(shape)


class Rotation(nn.Module):
    """x -> x R with R orthogonal (n, n): R = diag(signs) H for a Hadamard H of order n (applied
    through its Kronecker factors), or, where no Hadamard of order n is built here (dense=True),
    a seeded random orthogonal matrix stored whole. The signs (or the matrix) are saved with the
    model; the factors are rebuilt on load."""

    def __init__(self, n: int, seed: int = 0, dense: bool = False):
        super().__init__()
        self.n, self.dense = n, dense
        g = torch.Generator().manual_seed(seed)
        if dense:
            q, r = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
            self.register_buffer("matrix", (q * torch.sign(torch.diagonal(r))).float())
            self.factors = []
            return
        factors = hadamard_factors(n)
        if factors is None:
            raise ValueError(f"no Hadamard matrix of order {n} here (2^k times 12s and 20s); use dense=True")
        self.factors = factors
        self.register_buffer("signs", (torch.randint(0, 2, (n,), generator=g) * 2 - 1).float())
        for i, f in enumerate(factors):
            self.register_buffer(f"h{i}", _factor(f).float(), persistent=False)

    @classmethod
    def for_size(cls, n: int, seed: int = 0) -> "Rotation":
        return cls(n, seed, dense=hadamard_factors(n) is None)

    def _factors(self, transpose: bool = False) -> list[Tensor]:
        return [getattr(self, f"h{i}").T if transpose else getattr(self, f"h{i}") for i in range(len(self.factors))]

    def forward(self, x: Tensor) -> Tensor:
        if self.dense:
            return x @ self.matrix.to(x.dtype)
        return _kron(x * self.signs.to(x.dtype), self.factors, self._factors())

    def inverse(self, x: Tensor) -> Tensor:
        """x R^T (R^T = H^T diag(signs))."""
        if self.dense:
            return x @ self.matrix.to(x.dtype).T
        return _kron(x, self.factors, self._factors(transpose=True)) * self.signs.to(x.dtype)

    def matrix64(self) -> Tensor:
        """R as a dense float64 (n, n) matrix."""
        if self.dense:
            return self.matrix.double()
        eye = torch.eye(self.n, dtype=torch.float64) * self.signs.double()
        return _kron(eye, self.factors, [_factor(f) for f in self.factors])

    def spec(self) -> dict:
        return {"n": self.n, "dense": self.dense}

    def extra_repr(self) -> str:
        return f"n={self.n}, " + ("dense" if self.dense else f"hadamard {'x'.join(map(str, self.factors))}")


class RotatedLinear(nn.Linear):
    """A float Linear whose input is rotated first: F.linear(x R, W, b) (W stored rotated)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, rotation: Rotation, dtype=None):
        super().__init__(in_features, out_features, bias, dtype=dtype)
        self.input_rotation = rotation

    @classmethod
    def wrap(cls, lin: nn.Linear, rotation: Rotation) -> "RotatedLinear":
        new = cls(lin.in_features, lin.out_features, lin.bias is not None, rotation, dtype=lin.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(lin.weight)
            if lin.bias is not None:
                new.bias.copy_(lin.bias)
        return new

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(self.input_rotation(x))


class RotatedNorm(nn.Module):
    """The final norm of a rotated residual stream: x -> norm(x R^T) R, so the stream is read
    in its original basis by the norm and handed back rotated (to a head stored as W R)."""

    def __init__(self, norm: nn.Module, rotation: Rotation):
        super().__init__()
        self.norm, self.rotation = norm, rotation

    def forward(self, x: Tensor) -> Tensor:
        return self.rotation(self.norm(self.rotation.inverse(x)))


# ------------------------------------------------------------------ the model transform


@torch.no_grad()
def _is_plain_rms(norm: nn.Module) -> bool:
    """norm(x) == x / sqrt(mean(x^2) + eps) * weight, without bias or centring."""
    w, eps = getattr(norm, "weight", None), norm_eps(norm)
    if not isinstance(w, nn.Parameter) or w.dim() != 1 or eps is None or getattr(norm, "bias", None) is not None:
        return False
    x = (torch.randn(4, w.numel(), generator=torch.Generator().manual_seed(0)) * 3 + 1).to(w.dtype)
    xf = x.float()
    want = xf / torch.sqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * w.float()
    tol = 1e-3 if w.dtype == torch.float32 else 2e-2
    return torch.allclose(norm(x).float(), want, rtol=tol, atol=tol * 0.1 * want.abs().max().item())


def unsupported_reason(sm) -> str | None:
    """Why rotate_ cannot apply to this model, or None."""
    model = sm.model
    adapter = get_adapter(model)
    if adapter.norm_position_for(model) != "pre" or sm.kind == "seq2seq-lm":
        return "needs a pre-norm model with one layer stack (Llama family)"
    if getattr(adapter, "norm_weight_offset", 0.0):
        return "its norms scale by (1 + weight) (Gemma)"
    final = adapter.final_norm(model)
    if isinstance(final, RotatedNorm):
        return "it is already rotated"
    if final is None:
        return "no final norm found"
    layers = adapter.layers(model)
    if not layers:
        return "no layers"
    for li in layers:
        a, f = li.attention, li.ffn
        if set(li.norms) != {"attn", "ffn"} or li.cross_attention is not None:
            return f"layer {li.index} has norms {sorted(li.norms)} (only pre-attention and pre-FFN norms are supported)"
        if a.qkv is not None or a.q is None or not all(isinstance(m, nn.Linear) for m in (a.q, a.k, a.v, a.o, f.up, f.down)):
            return "needs separate nn.Linear q/k/v/o and FFN projections"
        if f.gate is not None and not isinstance(f.gate, nn.Linear):
            return "needs an nn.Linear gate projection"
    for n in [li.norms[k] for li in layers for k in ("attn", "ffn")] + [final]:
        if not _is_plain_rms(n):
            return f"{type(n).__name__} is not a plain RMSNorm (x / rms(x) * weight)"
    emb = adapter.embeddings(model)
    if type(emb) is not nn.Embedding:
        return f"its token embedding is a {type(emb).__name__}, not a plain nn.Embedding"
    head = adapter.lm_head(model)
    if head is not None and not isinstance(head, nn.Linear):
        return f"its output head is a {type(head).__name__}"
    return None


def _in(lin: nn.Linear, R: Tensor, col_scale: Tensor | None = None) -> None:
    """Input side: W <- W diag(col_scale) R."""
    W = lin.weight.double()
    if col_scale is not None:
        W = W * col_scale.double()[None, :]
    lin.weight.copy_((W @ R).to(lin.weight.dtype))


def _out(lin: nn.Linear, R: Tensor) -> None:
    """Output side: y <- y R, i.e. W <- R^T W, b <- b R."""
    lin.weight.copy_((R.T @ lin.weight.double()).to(lin.weight.dtype))
    if lin.bias is not None:
        lin.bias.copy_((lin.bias.double() @ R).to(lin.bias.dtype))


def _head_rows(lin: nn.Linear, Rh: Tensor, heads: int) -> None:
    """Each head's block of output rows rotated by Rh: y_h <- y_h Rh."""
    hd = Rh.shape[0]
    W = lin.weight.double().view(heads, hd, -1)
    lin.weight.copy_(torch.einsum("dk,hdi->hki", Rh, W).reshape(heads * hd, -1).to(lin.weight.dtype))
    if lin.bias is not None:
        lin.bias.copy_((lin.bias.double().view(heads, hd) @ Rh).reshape(-1).to(lin.bias.dtype))


def _head_cols(lin: nn.Linear, Rh: Tensor, heads: int) -> None:
    """Each head's block of input columns rotated: W_h <- W_h Rh."""
    hd = Rh.shape[0]
    W = lin.weight.double().view(-1, heads, hd)
    lin.weight.copy_((W @ Rh).reshape(-1, heads * hd).to(lin.weight.dtype))


@torch.no_grad()
def rotate_(sm, online: set[str], seed: int = 0) -> dict:
    """Rotate `sm` in place (see the module docstring). `online`: names of down projections that
    get the run-time Hadamard on their input (the quantized ones). Returns a summary for
    sm.meta["rotation"]. Raises ConfigError for a model it does not support, and RuntimeError
    if the float model's output moved (then the model in memory is no longer valid)."""
    reason = unsupported_reason(sm)
    if reason is not None:
        raise ConfigError(f"rotate: this model cannot be rotated: {reason}")
    model = sm.model
    adapter = get_adapter(model)
    names = {id(m): n for n, m in model.named_modules()}
    emb = adapter.embeddings(model)
    probe = {"input_ids": torch.randint(0, emb.num_embeddings, (1, 24), generator=torch.Generator().manual_seed(seed))}
    ref = model_output(sm, probe)
    hidden = emb.embedding_dim
    rot = Rotation.for_size(hidden, seed)
    R = rot.matrix64()
    n_down, no_down = 0, []
    layers = adapter.layers(model)
    for li in layers:
        a, f = li.attention, li.ffn
        for key, readers in (("attn", (a.q, a.k, a.v)), ("ffn", (f.gate, f.up))):
            norm = li.norms[key]
            w = norm.weight.detach().clone()
            for lin in readers:
                if lin is not None:
                    _in(lin, R, w)
            norm.weight.fill_(1.0)
        _out(a.o, R)
        _out(f.down, R)
        hd = a.head_dim
        Rh = Rotation.for_size(hd, seed + 1).matrix64()
        _head_rows(a.v, Rh, a.num_kv_heads)
        _head_cols(a.o, Rh, a.num_heads)
        dname = names[id(f.down)]
        if dname in online:
            if hadamard_factors(f.down.in_features) is None:
                no_down.append(dname)
                continue
            r = Rotation(f.down.in_features, seed + 2)
            _in(f.down, r.matrix64())
            set_module(model, dname, RotatedLinear.wrap(f.down, r))
            n_down += 1
    emb.weight.copy_((emb.weight.double() @ R).to(emb.weight.dtype))
    head = adapter.lm_head(model)
    if head is not None and head.weight is not emb.weight:
        _in(head, R)
    final = adapter.final_norm(model)
    fname = names[id(final)]
    set_module(model, fname, RotatedNorm(final, rot))
    out = model_output(sm, probe)
    moved = (out - ref).abs().max().item()
    # float32: only rounding; half precision weights round again after the rotation
    tol = 1e-3 if emb.weight.dtype == torch.float32 else 5e-2
    if not moved <= tol * ref.abs().max().item() + 1e-4:
        raise SlimformerError(f"rotate: the rotation changed the float model's output (max abs diff {moved:.3g}); "
                           "this architecture is not supported, and the model in memory is no longer valid")
    return {"seed": seed, "hidden": hidden, "residual": "dense orthogonal" if rot.dense else "hadamard",
            "layers": len(layers), "down_online": n_down, "down_without": no_down, "final_norm": fname,
            "max_abs_change": moved}
