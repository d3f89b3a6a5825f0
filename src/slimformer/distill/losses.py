"""Distillation losses: a registry of callables with one signature,

    loss(s, t, ctx) -> scalar tensor

s / t: what the student / teacher produced on the same batch (`Outputs`); ctx: a `LossContext`
(temperature, hard-label mix beta, layer map, learned projections, the attention mask).
Every loss is written so that a hand computation on tiny tensors gives the same number (tests).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.registry import Registry

LOSSES: Registry = Registry("distillation loss")


@dataclass
class Outputs:
    """logits (B, C) or (B, T, V); hidden: per layer (B, T, H), hidden[0] = embeddings output;
    attentions: per layer (B, heads, T, T) probabilities; qkv: per layer (q, k, v) projections
    (B, T, width); embedding: pooled sentence embedding (B, H)."""

    logits: Tensor | None = None
    hidden: list[Tensor] | None = None
    attentions: list[Tensor] | None = None
    qkv: list[tuple[Tensor, Tensor, Tensor]] | None = None
    embedding: Tensor | None = None

    def float(self) -> "Outputs":
        """Every tensor in fp32: losses are computed in full precision even when the forward ran in
        bf16 / fp16 autocast (softmax relations and KL terms are too coarse in bf16)."""
        def f(x):
            if x is None:
                return None
            if isinstance(x, (list, tuple)):
                return type(x)(f(v) for v in x)
            return x.float()
        return Outputs(**{k: f(getattr(self, k)) for k in ("logits", "hidden", "attentions", "qkv", "embedding")})


@dataclass
class LossContext:
    temperature: float = 2.0
    beta: float = 0.5  # weight of the hard-label loss in "kd" (1 - beta on the soft term)
    labels: Tensor | None = None
    mask: Tensor | None = None  # (B, T) attention mask: 1 = real token
    layer_map: list[tuple[int, int]] = field(default_factory=list)  # (student layer, teacher layer), 1-based
    projections: nn.ModuleDict | None = None  # "hidden{i}" -> Linear(student width, teacher width)
    relation_heads: int = 12  # MiniLM relation heads (any number dividing both widths)
    input_ids: Tensor | None = None  # (B, T) the batch's tokens ("lm": next-token targets)


def _masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of x (B, T, ...) over real tokens (and the trailing dims)."""
    if mask is None:
        return x.mean()
    m = mask.to(x.dtype).reshape(*mask.shape, *([1] * (x.dim() - 2)))
    return (x * m).sum() / (m.sum() * (x[0, 0].numel()))


@LOSSES.register("soft")
def soft(s: Outputs, t: Outputs, ctx: LossContext) -> Tensor:
    """KL(softmax(t / T) || softmax(s / T)) * T^2, averaged over rows (Hinton et al. 2015)."""
    T = ctx.temperature
    sl, tl = s.logits.float(), t.logits.float()
    if sl.dim() == 3:  # (B, T, V): rows are the real token positions
        keep = ctx.mask.bool() if ctx.mask is not None else torch.ones(sl.shape[:2], dtype=torch.bool)
        sl, tl = sl[keep], tl[keep]
    p = F.log_softmax(tl / T, -1)
    q = F.log_softmax(sl / T, -1)
    return (p.exp() * (p - q)).sum(-1).mean() * T * T


@LOSSES.register("hard")
def hard(s: Outputs, t: Outputs, ctx: LossContext) -> Tensor:
    """Cross-entropy on the labels (MSE for a one-output regression head)."""
    if ctx.labels is None:
        raise ValueError("loss 'hard' needs labels")
    if s.logits.shape[-1] == 1:
        return F.mse_loss(s.logits.squeeze(-1).float(), ctx.labels.float())
    return F.cross_entropy(s.logits.float(), ctx.labels.long())


@LOSSES.register("lm")
def lm(s: Outputs, t: Outputs, ctx: LossContext) -> Tensor:
    """Next-token cross-entropy of a causal LM on the batch's own tokens (real tokens only): with
    the teacher's generated sequences as the texts this is sequence-level KD (Kim & Rush 2016;
    see distill.sequence_kd_texts)."""
    logits = s.logits[:, :-1].float()
    target = ctx.input_ids[:, 1:].clone()
    if ctx.mask is not None:
        target[ctx.mask[:, 1:] == 0] = -100
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)


@LOSSES.register("kd")
def kd(s: Outputs, t: Outputs, ctx: LossContext) -> Tensor:
    """beta * hard-label loss + (1 - beta) * soft loss at temperature T (soft alone without labels)."""
    if ctx.labels is None or ctx.beta == 0:
        return soft(s, t, ctx)
    return ctx.beta * hard(s, t, ctx) + (1 - ctx.beta) * soft(s, t, ctx)


@LOSSES.register("hidden_mse")
def hidden_mse(s: Outputs, t: Outputs, ctx: LossContext) -> Tensor:
    """Mean over mapped layers of MSE(proj(student hidden), teacher hidden) on real tokens;
    proj is a learned Linear when the widths differ (identity when equal)."""
    total = 0.0
    for si, ti in ctx.layer_map:
        hs, ht = s.hidden[si].float(), t.hidden[ti].float()
        key = f"hidden{si}"
        if ctx.projections is not None and key in ctx.projections:
            hs = ctx.projections[key](hs)
        total = total + _masked_mean((hs - ht).pow(2), ctx.mask)
    return total / max(len(ctx.layer_map), 1)


@LOSSES.register("attention_kl")
def attention_kl(s: Outputs, t: Outputs, ctx: LossContext) -> Tensor:
    """Mean over mapped layers of KL(teacher attention || student attention) per query row (real
    tokens), heads averaged; needs the same number of heads in both (else use minilm_relation)."""
    total = 0.0
    for si, ti in ctx.layer_map:
        a_s, a_t = s.attentions[si - 1].float(), t.attentions[ti - 1].float()
        if a_s.shape != a_t.shape:
            raise ValueError(f"attention_kl: student layer {si} attention {tuple(a_s.shape)} vs teacher layer {ti} "
                             f"{tuple(a_t.shape)}; different head counts need loss 'minilm_relation'")
        kl = (a_t * (torch.log(a_t.clamp_min(1e-12)) - torch.log(a_s.clamp_min(1e-12)))).sum(-1)  # (B, h, T)
        total = total + _masked_mean(kl.transpose(1, 2), ctx.mask)
    return total / max(len(ctx.layer_map), 1)


def _relation(x: Tensor, heads: int, mask: Tensor | None) -> Tensor:
    """softmax(x_h x_h^T / sqrt(d_h)) per relation head h: (B, heads, T, T) log-probabilities."""
    B, T, W = x.shape
    if W % heads:
        raise ValueError(f"minilm_relation: width {W} is not divisible by relation_heads={heads}")
    xh = x.float().reshape(B, T, heads, W // heads).transpose(1, 2)  # (B, h, T, d)
    scores = xh @ xh.transpose(-1, -2) / math.sqrt(W // heads)
    if mask is not None:
        scores = scores.masked_fill(~mask.bool()[:, None, None, :], -1e4)
    return F.log_softmax(scores, -1)


@LOSSES.register("minilm_relation")
def minilm_relation(s: Outputs, t: Outputs, ctx: LossContext) -> Tensor:
    """MiniLM v2 (Wang et al. 2021): KL between the teacher's and student's query-query, key-key
    and value-value relations of the mapped layers, with q/k/v split into the same number of
    relation heads on both sides, so head counts and widths may differ."""
    total, n = 0.0, 0
    for si, ti in ctx.layer_map:
        for j in range(3):  # q-q, k-k, v-v
            lt = _relation(t.qkv[ti - 1][j], ctx.relation_heads, ctx.mask)
            ls = _relation(s.qkv[si - 1][j], ctx.relation_heads, ctx.mask)
            kl = (lt.exp() * (lt - ls)).sum(-1)  # (B, h, T)
            total = total + _masked_mean(kl.transpose(1, 2), ctx.mask)
            n += 1
    return total / max(n, 1)


@LOSSES.register("embedding_mse")
def embedding_mse(s: Outputs, t: Outputs, ctx: LossContext) -> Tensor:
    """MSE between the student's and teacher's pooled sentence embeddings (sentence-transformers'
    model distillation); a learned projection "embedding" maps widths when they differ."""
    e = s.embedding.float()
    if ctx.projections is not None and "embedding" in ctx.projections:
        e = ctx.projections["embedding"](e)
    return F.mse_loss(e, t.embedding.float())


@LOSSES.register("embedding_cosine")
def embedding_cosine(s: Outputs, t: Outputs, ctx: LossContext) -> Tensor:
    """1 - mean cosine between student and teacher sentence embeddings."""
    e = s.embedding.float()
    if ctx.projections is not None and "embedding" in ctx.projections:
        e = ctx.projections["embedding"](e)
    return 1 - F.cosine_similarity(e, t.embedding.float(), dim=-1).mean()


def layer_map(kind: str, n_student: int, n_teacher: int, explicit: list[int] | None = None) -> list[tuple[int, int]]:
    """(student layer, teacher layer) pairs, 1-based (hidden[i] is the output of layer i).
    uniform: student layer i <- teacher layer round(i * n_teacher / n_student) (the last maps to the
    last); last: the last k teacher layers; explicit: teacher layer per student layer."""
    if kind == "explicit":
        if explicit is None or len(explicit) != n_student:
            raise ValueError(f"layer map 'explicit' needs {n_student} teacher layers, got {explicit}")
        bad = [x for x in explicit if not 1 <= x <= n_teacher]
        if bad:
            raise ValueError(f"layer map: teacher layers {bad} out of range; accepted: 1..{n_teacher}")
        return list(zip(range(1, n_student + 1), explicit))
    if kind == "last":
        return [(i, n_teacher - n_student + i) for i in range(1, n_student + 1)]
    if kind == "uniform":
        return [(i, max(1, round(i * n_teacher / n_student))) for i in range(1, n_student + 1)]
    raise ValueError(f"layer map {kind!r}; accepted: uniform, last, explicit")
