"""Activation-aware weight scaling (AWQ, Lin et al. 2023) before weight-only quantization.

Weights that multiply large activations matter most to a layer's output. For each group of
Linear layers that read one input (q/k/v; gate/up; down; o), a per-input-channel scale

    s = mean|x|^alpha, normalised so that sqrt(max(s) * min(s)) = 1

multiplies the weight columns and divides the input, folded exactly into the op that makes
that input: the weight (and bias) of a pre-norm (q/k/v and gate/up in pre-LN models), or the
output rows of the previous Linear (up -> down in a gated FFN; v -> o, where under GQA one
value channel's scale is shared by the query heads that read it). The float model computes the same function; only where the rounding
error of the later quantization falls changes. alpha in {0, 0.05, ..., 1} is searched per group
for the least layer-output error under each layer's own quantizer (round-to-nearest, no clip
search), E||(W - Q(W s) / s) x||^2 = tr(D H D^T) with H = E[x x^T] from calibration data.
alpha = 0 (s = 1) is a candidate, so the search never raises that error.

Post-LN models (BERT, BART) only get the v -> o and up -> down folds: their norm output is also the
residual stream, so scaling it would change the model. Each norm fold is checked on random
input (a norm that is not `weight * f(x) + bias`, e.g. Gemma's `(1 + weight)`, is skipped), and
the whole model's output on one calibration batch is compared before and after; if it moved,
every scale is undone and a warning says so.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn

from ..adapters import get_adapter
from ..adapters.base import linear_weight
from ..models.activations import model_output, observe_inputs
from ..models.sequential import run_sequential, sequential_supported

ALPHA_STEPS = 20  # alpha in {0, 1/20, ..., 1}
_EPS = 1e-5


@dataclass
class ScaleGroup:
    """Linears reading one input, and the module that produces it."""

    prev: nn.Module
    prev_name: str
    prev_kind: str  # "norm" | "linear"
    linears: list[str]
    kv_repeat: tuple[int, int] | None = None  # v -> o under GQA: (query heads per kv head, head_dim)
    alpha: float | None = None
    scale: Tensor | None = field(default=None, repr=False)  # per channel of prev's output

    def expand(self, s: Tensor) -> Tensor:
        """Scale per input channel of the linears from the scale per channel of prev's output
        (under GQA each value channel feeds n_rep query heads' channels of o)."""
        if self.kv_repeat is None:
            return s
        n_rep, hd = self.kv_repeat
        return s.view(-1, 1, hd).expand(-1, n_rep, hd).reshape(-1)

    def reduce(self, x: Tensor) -> Tensor:
        """Per-input-channel statistic of the linears -> per channel of prev's output (mean)."""
        if self.kv_repeat is None:
            return x
        n_rep, hd = self.kv_repeat
        return x.view(-1, n_rep, hd).mean(1).reshape(-1)

    @property
    def key(self) -> str:
        return f"{self.prev_name} -> {', '.join(n.rsplit('.', 1)[-1] for n in self.linears)}"


def _scale_inputs(mod: nn.Module, s: Tensor) -> None:
    """W[:, j] *= s_j (input channels; linear_weight is an (out, in) view, also for Conv1D)."""
    w = linear_weight(mod)
    w.mul_(s[None, :].to(w.dtype))


def _scale_outputs(mod: nn.Module, s: Tensor) -> None:
    """Output channel i divided by s_i (weight rows and bias)."""
    w = linear_weight(mod)
    w.div_(s[:, None].to(w.dtype))
    if getattr(mod, "bias", None) is not None:
        mod.bias.div_(s.to(mod.bias.dtype))


def _scale_norm(norm: nn.Module, s: Tensor, inverse: bool = False) -> None:
    f = (lambda t: t.mul_(s.to(t.dtype))) if inverse else (lambda t: t.div_(s.to(t.dtype)))
    f(norm.weight)
    if getattr(norm, "bias", None) is not None:
        f(norm.bias)


@torch.no_grad()
def _norm_folds_exactly(norm: nn.Module, width: int) -> bool:
    """Whether dividing the norm's weight (and bias) by s divides its output by s (true for
    LayerNorm and plain RMSNorm, false e.g. for Gemma's x * (1 + weight))."""
    w = getattr(norm, "weight", None)
    if not isinstance(w, nn.Parameter) or w.dim() != 1 or w.numel() != width:
        return False
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, width, generator=g).to(w.dtype)
    s = torch.rand(width, generator=g) + 0.5
    before = norm(x).float()
    _scale_norm(norm, s)
    after = norm(x).float()
    _scale_norm(norm, s, inverse=True)
    return torch.allclose(after * s, before, rtol=1e-3, atol=1e-4 * before.abs().max().item() + 1e-6)


def scale_groups(sm, names: set[str]) -> list[ScaleGroup]:
    """The foldable groups of the model whose Linears are all in `names` (quantized layers)."""
    model = sm.model
    adapter = get_adapter(model)
    mod_name = {id(m): n for n, m in model.named_modules()}
    pre = adapter.norm_position_for(model) == "pre"
    groups: list[ScaleGroup] = []

    def add(prev, kind, mods, kv_repeat=None):
        mods = [m for m in mods if m is not None]
        lin = [mod_name.get(id(m)) for m in mods]
        if prev is None or not mods or any(n is None or n not in names for n in lin):
            return
        groups.append(ScaleGroup(prev, mod_name[id(prev)], kind, lin, kv_repeat))

    for li in adapter.layers(model):
        a, f = li.attention, li.ffn
        if pre and "attn" in li.norms:
            add(li.norms["attn"], "norm", [a.qkv] if a.qkv is not None else [a.q, a.k, a.v])
        if a.v is not None and a.qkv is None and a.num_kv_heads and a.num_heads % a.num_kv_heads == 0:
            n_rep = a.num_heads // a.num_kv_heads  # GQA: query head h reads kv head h // n_rep
            add(a.v, "linear", [a.o], (n_rep, a.head_dim) if n_rep > 1 else None)
        c = li.cross_attention
        if pre and c is not None and "cross" in li.norms and c.q is not None:
            add(li.norms["cross"], "norm", [c.q])
        if pre and "ffn" in li.norms:
            add(li.norms["ffn"], "norm", [f.gate, f.up])
        if f.gate is not None:
            add(f.up, "linear", [f.down])
    return groups


class _Stats:
    """E[x x^T] and E|x| of one input, accumulated over calibration rows (float64 sums)."""

    def __init__(self, width: int):
        self.xx = torch.zeros(width, width, dtype=torch.float64)
        self.abs = torch.zeros(width, dtype=torch.float64)
        self.n = 0

    def add(self, x: Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        self.xx += (x.T @ x).double()
        self.abs += x.abs().sum(0).double()
        self.n += x.shape[0]


def search_scale(weights: list[Tensor], quantizers: list[Callable[[Tensor], Tensor]], H: Tensor,
                 act_mean: Tensor, steps: int = ALPHA_STEPS,
                 expand: Callable[[Tensor], Tensor] | None = None) -> tuple[float, Tensor, list[float]]:
    """(alpha, s, errors per alpha) minimising sum_i tr(D_i H D_i^T), D_i = W_i - Q_i(W_i s) / s.
    weights: (out_i, in) float; quantizers: W -> dequantized W; H (in, in); act_mean: mean |x|
    per channel of s. expand: s -> per input channel of the weights when s is shared (GQA:
    one value channel feeds several query heads); default identity."""
    H = H.float()
    base = act_mean.float().clamp_min(_EPS)
    best, errs = None, []
    for k in range(steps + 1):
        alpha = k / steps
        s = base.pow(alpha)
        s = s / (s.max() * s.min()).sqrt()
        se = expand(s) if expand is not None else s
        err = 0.0
        for w, q in zip(weights, quantizers):
            d = w - q(w * se) / se
            err += ((d @ H) * d).sum().item()
        errs.append(err)
        if best is None or err < best[0]:
            best = (err, alpha, s)
    return best[1], best[2], errs


def _apply(sm, g: ScaleGroup, s: Tensor, inverse: bool = False) -> None:
    """Fold s (per channel of prev's output): prev's output / s, the linears' inputs * s."""
    t = 1.0 / s if inverse else s
    if g.prev_kind == "norm":
        _scale_norm(g.prev, s, inverse=inverse)
    else:
        _scale_outputs(g.prev, t)
    for n in g.linears:
        _scale_inputs(sm.model.get_submodule(n), g.expand(t))


@torch.no_grad()
def awq_scale_(sm, names: set[str], batches: list[dict], quantizer_of: Callable[[str], Callable[[Tensor], Tensor]],
               desc: str = "awq scale search") -> tuple[list[ScaleGroup], list[str]]:
    """Search and fold AWQ scales for every foldable group of `names`, in place.
    quantizer_of(name) -> W (out, in) float -> dequantized W, the layer's own quantizer.
    Returns (the groups scaled, warnings)."""
    warnings: list[str] = []
    groups = scale_groups(sm, names)
    if not groups:
        return [], ["awq: no foldable layer groups in this architecture (pre-norm -> q/k/v or gate/up, "
                    "up -> down, v -> o); quantized without scaling"]
    bad = [g for g in groups if g.prev_kind == "norm"
           and not _norm_folds_exactly(g.prev, linear_weight(sm.model.get_submodule(g.linears[0])).shape[1])]
    if bad:
        warnings.append(f"awq: {len(bad)} norm(s) cannot take a per-channel scale exactly "
                        f"({type(bad[0].prev).__name__}); their layers are not scaled")
        groups = [g for g in groups if g not in bad]
    by_first = {g.linears[0]: g for g in groups}
    stats: dict[str, _Stats] = {}

    def observe(name, x, raw=None):
        if name in by_first:
            stats.setdefault(name, _Stats(x.shape[-1])).add(x)

    def fold(items):
        for name, _ in items:
            g = by_first.get(name)
            if g is None or name not in stats:
                continue
            st = stats.pop(name)
            H, mean = (st.xx / max(st.n, 1)).float(), (st.abs / max(st.n, 1)).float()
            ws = [linear_weight(sm.model.get_submodule(n)).float() for n in g.linears]
            g.alpha, g.scale, _ = search_scale(ws, [quantizer_of(n) for n in g.linears], H, g.reduce(mean),
                                               expand=g.expand)
            _apply(sm, g, g.scale)

    ref = model_output(sm, batches[0])
    firsts = [(n, sm.model.get_submodule(n)) for n in by_first]
    if sequential_supported(sm):
        run_sequential(sm, firsts, batches, observe, fold, desc=desc, true_sequential=False, exact=True)
    else:
        observe_inputs(sm, firsts, batches, observe, desc)
        fold(firsts)
    done = [g for g in groups if g.scale is not None]
    out = model_output(sm, batches[0])
    moved = (out - ref).abs().max().item()
    if not moved <= 1e-3 * ref.abs().max().item() + 1e-4:
        for g in reversed(done):
            _apply(sm, g, g.scale, inverse=True)
        warnings.append(f"awq: scaling changed the float model's output (max abs diff {moved:.3g}); "
                        "all scales undone, quantized without scaling")
        return [], warnings
    return done, warnings


def summary(groups: list[ScaleGroup]) -> dict:
    """For the model's metadata: alpha per group."""
    return {"groups": len(groups), "alpha": {g.key: g.alpha for g in groups}}
