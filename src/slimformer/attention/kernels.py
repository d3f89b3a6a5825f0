"""Attention implementations on tensors, one signature for all:

    fn(q, k, v, key_mask=None, causal=False, scale=None, **options) -> out   # (B, H, T, D)

q: (B, H, T, D); k, v: (B, Hkv, S, D) with H a multiple of Hkv (grouped-query attention);
key_mask: (B, S) bool, True = a real token, or None; causal: query i sits at absolute position
S - T + i (so a 1-token decoding step sees every cached key) and sees keys j <= that position.
Rows with no visible key return zeros. Every kernel is checked against `eager` in the tests:
exactly where it must be (a window covering the sequence, all-global tokens, one bucket, one
landmark per token, stride 1) and within a stated error where it approximates.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..core.errors import ConfigError


# ---------------------------------------------------------------- shared pieces
def _repeat_kv(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, Hkv, S, D) -> (B, H, S, D): each key/value head serves H / Hkv query heads."""
    r = heads // x.shape[1]
    return x if r == 1 else x.repeat_interleave(r, dim=1)


def _scale(q: torch.Tensor, scale: float | None) -> float:
    return scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])


def dense_mask(t: int, s: int, key_mask, causal: bool, device) -> torch.Tensor | None:
    """(B or 1, 1, T, S) bool, True = may attend; None when everything is visible."""
    m = None
    if causal:
        qpos = torch.arange(s - t, s, device=device)[:, None]
        m = (torch.arange(s, device=device)[None, :] <= qpos)[None, None]      # (1, 1, T, S)
    if key_mask is not None:
        km = key_mask[:, None, None, :].bool()                                    # (B, 1, 1, S)
        m = km if m is None else (m & km)
    return m


def _softmax_attend(scores: torch.Tensor, allowed, v: torch.Tensor):
    """softmax over the last axis (float32) where `allowed`, then @ v; also the log-sum-exp."""
    s = scores.float()
    if allowed is not None:
        s = s.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(s, dim=-1, keepdim=True)                                # (..., T, 1)
    p = torch.exp(s - lse).nan_to_num(0.0)
    return (p.to(v.dtype) @ v), lse


def _check_bidirectional(name: str, causal: bool) -> None:
    if causal:
        raise ConfigError(f"attention {name!r} is bidirectional only (encoders); for causal models use sdpa, "
                          "sliding_window, block_sparse, lsh or linear")


# ---------------------------------------------------------------- reference and SDPA
def eager(q, k, v, key_mask=None, causal=False, scale=None):
    """The reference: softmax(q k^T * scale + mask) v, in float32 for the softmax."""
    k, v = _repeat_kv(k, q.shape[1]), _repeat_kv(v, q.shape[1])
    scores = (q @ k.transpose(-1, -2)) * _scale(q, scale)                          # (B, H, T, S)
    out, _ = _softmax_attend(scores, dense_mask(q.shape[2], k.shape[2], key_mask, causal, q.device), v)
    return out


def sdpa(q, k, v, key_mask=None, causal=False, scale=None):
    """torch's fused `scaled_dot_product_attention` (flash / memory-efficient kernels)."""
    t, s = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if key_mask is None and (not causal or t == s):
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal and t > 1, scale=scale, enable_gqa=gqa)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=dense_mask(t, s, key_mask, causal, q.device),
                                             scale=scale, enable_gqa=gqa)
    return out.nan_to_num(0.0)


# ---------------------------------------------------------------- local: sliding window (+ global tokens)
def _globals(positions, s: int, device) -> torch.Tensor:
    g = torch.tensor(sorted({p % s for p in positions}), dtype=torch.long, device=device) if positions else None
    return g


def sliding_window(q, k, v, key_mask=None, causal=False, scale=None, window: int = 256, global_tokens=()):
    """Each query sees the keys within `window` positions (|i - j| < window; causal: 0 <= i - j <
    window), computed in blocks of up to 128 queries against the keys their band reaches, so time
    and memory grow as T x window. `global_tokens` (positions, e.g. (0,) for
    [CLS]; negatives count from the end) attend to and are attended by every position
    (Longformer). Exact when window >= T."""
    if not isinstance(window, int) or window < 1:
        raise ConfigError(f"sliding_window: window={window!r}; accepted: an integer >= 1")
    b, h, t, d = q.shape
    s = k.shape[2]
    sc = _scale(q, scale)
    g = _globals(global_tokens, s, q.device)
    if t != s or window >= s:                      # a decoding step, or a window covering everything
        out = _window_dense(q, k, v, key_mask, causal, sc, window, g)
    else:
        out = _window_blocked(q, k, v, key_mask, causal, sc, window, g)
    if g is not None and t == s:                   # global queries see everything
        if causal:                                 # only the G global rows of the causal mask: (G, S)
            allowed = (torch.arange(s, device=q.device)[None, :] <= g[:, None])[None, None]
            if key_mask is not None:
                allowed = allowed & key_mask[:, None, None, :].bool()
            rows, _ = _softmax_attend((q[:, :, g] @ _repeat_kv(k, h).transpose(-1, -2)) * sc, allowed,
                                      _repeat_kv(v, h))
        else:
            rows = eager(q[:, :, g], k, v, key_mask, False, sc)
        out[:, :, g] = rows.to(out.dtype)
    return out


def _window_dense(q, k, v, key_mask, causal, sc, window, g):
    t, s = q.shape[2], k.shape[2]
    qpos = torch.arange(s - t, s, device=q.device)[:, None]
    kpos = torch.arange(s, device=q.device)[None, :]
    rel = qpos - kpos                                                              # (T, S)
    band = (rel >= 0) & (rel < window) if causal else rel.abs() < window
    if g is not None:
        gcol = torch.zeros(s, dtype=torch.bool, device=q.device)
        gcol[g] = True
        band = band | (gcol[None, :] & ((rel >= 0) if causal else True))
    allowed = band[None, None]
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, None, :].bool()
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=sc, enable_gqa=q.shape[1] != k.shape[1])
    return out.nan_to_num(0.0)


def _window_blocked(q, k, v, key_mask, causal, sc, w, g):
    """Queries in blocks of b = min(w, 128); block n sees the keys from its first query's
    position - (w - 1) to its last query's + (w - 1) (causal: + 0), b + 2(w - 1) keys taken as
    strided views of the padded keys; the band mask is the same for every block. Smaller query
    blocks waste fewer scores outside the band (b + 2w - 2 computed per 2w - 1 needed)."""
    bsz, h, t, d = q.shape
    hk = k.shape[1]
    b = min(w, 128)
    nb = -(-t // b)
    pad = nb * b - t
    span = b + (w - 1) * (1 if causal else 2)                                      # keys per block
    valid = key_mask.bool() if key_mask is not None else torch.ones(bsz, t, dtype=torch.bool, device=q.device)
    if g is not None:                               # global keys are appended to every block instead
        valid = valid.clone()
        gvalid = valid[:, g]                                                      # (B, G)
        valid[:, g] = False
    after = pad + (0 if causal else w - 1)
    qb = F.pad(q, (0, 0, 0, pad)).view(bsz, h, nb, b, d)                         # (B, H, nb, b, D)
    keys = F.pad(k, (0, 0, w - 1, after)).unfold(2, span, b).transpose(-1, -2)  # (B, Hkv, nb, span, D)
    vals = F.pad(v, (0, 0, w - 1, after)).unfold(2, span, b).transpose(-1, -2)
    kvalid = F.pad(valid, (w - 1, after)).unfold(1, span, b)                     # (B, nb, span)
    r = torch.arange(b, device=q.device)[:, None]
    c = torch.arange(span, device=q.device)[None, :]
    rel = r - c + (w - 1)                                                          # i - j, same for every block
    band = (rel >= 0) & (rel < w) if causal else rel.abs() < w                     # (b, span)
    allowed = band[None, None] & kvalid[:, :, None, :]                             # (B, nb, b, span)
    if g is not None:
        ng = g.numel()
        keys = torch.cat([keys, k[:, :, g][:, :, None].expand(bsz, hk, nb, ng, d)], dim=3)
        vals = torch.cat([vals, v[:, :, g][:, :, None].expand(bsz, hk, nb, ng, d)], dim=3)
        gallowed = gvalid[:, None, None, :].expand(bsz, nb, b, ng)
        if causal:
            qpos = (torch.arange(nb, device=q.device)[:, None] * b + torch.arange(b, device=q.device)[None, :])
            gallowed = gallowed & (g[None, None, :] <= qpos[:, :, None])[None]
        allowed = torch.cat([allowed, gallowed], dim=3)
    # (B, H, nb, ...) -> (B * nb, H, ...) for one batched fused call
    fold = lambda x: x.transpose(1, 2).reshape(bsz * nb, x.shape[1], x.shape[3], d)  # noqa: E731
    out = F.scaled_dot_product_attention(fold(qb), fold(keys), fold(vals),
                                         attn_mask=allowed.reshape(bsz * nb, 1, b, -1), scale=sc,
                                         enable_gqa=h != hk)
    out = out.nan_to_num(0.0).view(bsz, nb, h, b, d).transpose(1, 2).reshape(bsz, h, nb * b, d)
    return out[:, :, :t]


# ---------------------------------------------------------------- BigBird block sparse
def block_pattern(nb: int, block_window: int, global_blocks: int, random_blocks: int, seed: int,
                  causal: bool) -> torch.Tensor:
    """(nb, nb) bool: which key blocks each query block sees (window, global, random)."""
    idx = torch.arange(nb)
    rel = idx[:, None] - idx[None, :]
    pat = rel.abs() <= block_window // 2
    pat[:, :global_blocks] = True
    pat[:global_blocks, :] = True
    gen = torch.Generator().manual_seed(seed)
    for n in range(nb):
        if random_blocks:
            pick = torch.randperm(nb, generator=gen)[:random_blocks]
            pat[n, pick] = True
    if causal:
        pat &= rel >= 0
    return pat


def block_sparse(q, k, v, key_mask=None, causal=False, scale=None, block: int = 64, global_blocks: int = 1,
                 random_blocks: int = 2, seed: int = 0):
    """BigBird: queries in blocks of `block`; each block sees its neighbouring blocks, the first
    `global_blocks` blocks and `random_blocks` random blocks (fixed by `seed`); the global blocks
    see everything. Key blocks are gathered per query block, so the cost is T x (3 + g + r) x
    block. Exact when the random blocks cover every block."""
    for name, val, lo in (("block", block, 1), ("global_blocks", global_blocks, 0), ("random_blocks", random_blocks, 0)):
        if not isinstance(val, int) or val < lo:
            raise ConfigError(f"block_sparse: {name}={val!r}; accepted: an integer >= {lo}")
    bsz, h, t, d = q.shape
    s = k.shape[2]
    sc = _scale(q, scale)
    nb = -(-s // block)
    pat = block_pattern(nb, 3, global_blocks, random_blocks, seed, causal).to(q.device)
    if t != s:                                      # decoding: expand the pattern to positions
        qblk = torch.arange(s - t, s, device=q.device) // block
        kblk = torch.arange(s, device=q.device) // block
        allowed = pat[qblk][:, kblk][None, None] & dense_mask(t, s, key_mask, causal, q.device) \
            if (causal or key_mask is not None) else pat[qblk][:, kblk][None, None]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=sc,
                                              enable_gqa=h != k.shape[1]).nan_to_num(0.0)
    # the global query blocks see every block: they are computed densely below (g x block rows
    # against all keys), so the gathered blocks per query block stay 3 + g + r, not nb
    g_rows = 0 if causal else min(global_blocks, nb)
    m = int(pat[g_rows:].sum(1).max()) if nb > g_rows else int(pat.sum(1).max())
    order = torch.sort((~pat).to(torch.int8), dim=1, stable=True).indices[:, :m]  # the seen blocks first
    seen = torch.gather(pat, 1, order)                                             # (nb, m)
    pad = nb * block - t
    kk, vv = _repeat_kv(k, h), _repeat_kv(v, h)
    qb = F.pad(q, (0, 0, 0, pad)).view(bsz, h, nb, block, d)
    kb = F.pad(kk, (0, 0, 0, pad)).view(bsz, h, nb, block, d)[:, :, order].reshape(bsz, h, nb, m * block, d)
    vb = F.pad(vv, (0, 0, 0, pad)).view(bsz, h, nb, block, d)[:, :, order].reshape(bsz, h, nb, m * block, d)
    valid = key_mask.bool() if key_mask is not None else torch.ones(bsz, t, dtype=torch.bool, device=q.device)
    kvalid = F.pad(valid, (0, pad)).view(bsz, nb, block)[:, order]                 # (B, nb, m, block)
    kvalid = (kvalid & seen[None, :, :, None]).reshape(bsz, nb, 1, m * block)
    allowed = kvalid
    if causal:
        qpos = torch.arange(nb * block, device=q.device).view(nb, block, 1)
        kpos = (order[:, :, None] * block + torch.arange(block, device=q.device)).reshape(nb, 1, m * block)
        allowed = allowed & (kpos <= qpos)[None]
    out, _ = _softmax_attend((qb @ kb.transpose(-1, -2)) * sc, allowed[:, None], vb)
    out = out.reshape(bsz, h, nb * block, d)[:, :, :t]
    if g_rows:
        n = min(g_rows * block, t)
        rows, _ = _softmax_attend((q[:, :, :n] @ kk.transpose(-1, -2)) * sc, valid[:, None, None, :], vv)
        out = torch.cat([rows.to(out.dtype), out[:, :, n:]], dim=2)
    return out


# ---------------------------------------------------------------- Reformer-style LSH
def _hash(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Angular LSH: bucket = argmax([xR, -xR]) of the unit vector. x (B, H, T, D) -> (B, H, T)."""
    xr = F.normalize(x.float(), dim=-1) @ rotations                                # (B, H, T, n/2)
    return torch.cat([xr, -xr], dim=-1).argmax(-1)


def lsh(q, k, v, key_mask=None, causal=False, scale=None, buckets: int = 8, rounds: int = 2, seed: int = 0):
    """Reformer: queries and keys are hashed with the same random rotations into `buckets`
    buckets, sorted by bucket, and cut into `buckets` equal chunks; each query chunk attends to
    the key chunk of the same rank and the one before. `rounds` hashings are combined by their
    log-sum-exp. Cost T x 2T/buckets per round. Exact with buckets=1. A decoding step (T < S)
    attends to every key (one query is cheap)."""
    if not isinstance(buckets, int) or buckets < 1 or (buckets > 1 and buckets % 2):
        raise ConfigError(f"lsh: buckets={buckets!r}; accepted: 1 or an even integer >= 2")
    if not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"lsh: rounds={rounds!r}; accepted: an integer >= 1")
    bsz, h, t, d = q.shape
    s = k.shape[2]
    if t != s or buckets == 1:
        return eager(q, k, v, key_mask, causal, scale)
    sc = _scale(q, scale)
    kk, vv = _repeat_kv(k, h), _repeat_kv(v, h)
    n = buckets
    size = -(-t // n)
    pad = n * size - t
    gen = torch.Generator().manual_seed(seed)
    pos = torch.arange(t, device=q.device)
    valid = key_mask.bool() if key_mask is not None else torch.ones(bsz, t, dtype=torch.bool, device=q.device)
    outs, lses = [], []
    for _ in range(rounds):
        rot = torch.randn(d, n // 2, generator=gen).to(q.device)
        # sort by (bucket, position); padding tokens after every bucket, so they never move real ones
        last = n * (t + 1) + pos
        qkey = torch.where(valid[:, None], _hash(q, rot) * (t + 1) + pos, last)
        kkey = torch.where(valid[:, None], _hash(kk, rot) * (t + 1) + pos, last)
        qi = F.pad(qkey.argsort(-1), (0, pad), value=0)                             # (B, H, n * size)
        ki = kkey.argsort(-1)
        kslot = F.pad(ki, (0, pad), value=0)
        kok = F.pad(torch.ones_like(ki, dtype=torch.bool), (0, pad), value=False)
        g = lambda x, i: torch.gather(x, 2, i[..., None].expand(*i.shape, d))  # noqa: E731
        qs = g(q, qi).view(bsz, h, n, size, d)
        ks = g(kk, kslot).view(bsz, h, n, size, d)
        vs = g(vv, kslot).view(bsz, h, n, size, d)
        kv_ok = (kok & torch.gather(valid[:, None].expand(bsz, h, t), 2, kslot)).view(bsz, h, n, size)
        kpos = kslot.view(bsz, h, n, size)
        prev = lambda x: torch.cat([x.roll(1, dims=2), x], dim=3)  # noqa: E731  chunk c-1 and c
        ks2, vs2, ok2, kp2 = prev(ks), prev(vs), prev(kv_ok), prev(kpos)
        ok2[:, :, 0, :size] = False                                                # chunk 0 has no previous
        allowed = ok2[:, :, :, None, :]                                            # (B, H, n, 1, 2 size)
        if causal:
            qp = qi.view(bsz, h, n, size, 1)
            allowed = allowed & (kp2[:, :, :, None, :] <= qp)
        o, lse = _softmax_attend((qs @ ks2.transpose(-1, -2)) * sc, allowed, vs2)  # (B, H, n, size, D)
        # back to the original order
        back = torch.empty_like(qi[:, :, :t])
        back.scatter_(2, qi[:, :, :t], torch.arange(t, device=q.device).expand(bsz, h, t))
        o = o.reshape(bsz, h, n * size, d)
        lse = lse.reshape(bsz, h, n * size, 1)
        outs.append(torch.gather(o, 2, back[..., None].expand(bsz, h, t, d)))
        lses.append(torch.gather(lse, 2, back[..., None]))
    lse = torch.stack(lses)                                                        # (R, B, H, T, 1)
    w = torch.softmax(lse.nan_to_num(float("-inf")), dim=0).nan_to_num(0.0)
    return (torch.stack(outs).float() * w).sum(0).to(q.dtype)


# ---------------------------------------------------------------- linear (kernel feature maps)
def _features(x: torch.Tensor, kind: str, proj, is_query: bool) -> torch.Tensor:
    if kind == "elu":
        return F.elu(x.float()) + 1.0
    xw = x.float() @ proj                                                          # (B, H, T, m)
    sq = (x.float() ** 2).sum(-1, keepdim=True) / 2
    stab = xw.amax(-1, keepdim=True) if is_query else xw.amax(dim=(-1, -2), keepdim=True)
    return torch.exp(xw - sq - stab) / math.sqrt(proj.shape[1]) + 1e-6


def linear(q, k, v, key_mask=None, causal=False, scale=None, feature_map: str = "elu", features: int = 256,
           seed: int = 0, chunk: int = 64):
    """Linear attention: phi(q) (phi(k)^T v) / (phi(q) . sum phi(k)), O(T) in time and memory.
    feature_map "elu" (elu(x) + 1, Katharopoulos et al.: a different kernel from softmax, meant
    for models trained with it) or "performer" (positive random features, Choromanski et al.:
    an unbiased estimate of softmax attention whose error falls as `features` grows). Causal
    use runs in chunks of `chunk` with a running state."""
    if feature_map not in ("elu", "performer"):
        raise ConfigError(f"linear: feature_map={feature_map!r}; accepted: elu, performer")
    bsz, h, t, d = q.shape
    s = k.shape[2]
    kk, vv = _repeat_kv(k, h).float(), _repeat_kv(v, h).float()
    proj = None
    if feature_map == "performer":
        gen = torch.Generator().manual_seed(seed)
        blocks = [torch.linalg.qr(torch.randn(d, d, generator=gen))[0] for _ in range(-(-features // d))]
        norms = torch.randn(features, d, generator=gen).norm(dim=1)
        proj = (torch.cat(blocks, dim=1)[:, :features] * norms[None]).to(q.device)
        r = _scale(q, scale) ** 0.5                                                # q.k * scale = (r q).(r k)
        qf, kf = _features(q * r, "performer", proj, True), _features(kk * r, "performer", proj, False)
    else:
        qf, kf = _features(q, "elu", None, True), _features(kk, "elu", None, False)
    if key_mask is not None:
        kf = kf * key_mask[:, None, :, None].float()
    if not causal:
        kv = kf.transpose(-1, -2) @ vv                                             # (B, H, m, D)
        z = qf @ kf.sum(2, keepdim=True).transpose(-1, -2)                         # (B, H, T, 1)
        return ((qf @ kv) / z.clamp_min(1e-9)).to(q.dtype)
    off = s - t
    # state from the keys before the first query position's chunk, then chunk by chunk
    out = torch.empty(bsz, h, t, d, device=q.device)
    state = torch.zeros(bsz, h, kf.shape[-1], d, device=q.device)
    norm = torch.zeros(bsz, h, 1, kf.shape[-1], device=q.device)
    if off:
        state = kf[:, :, :off].transpose(-1, -2) @ vv[:, :, :off]
        norm = kf[:, :, :off].sum(2, keepdim=True)
    tri = None
    for a in range(0, t, chunk):
        e = min(a + chunk, t)
        qc, kc, vc = qf[:, :, a:e], kf[:, :, off + a:off + e], vv[:, :, off + a:off + e]
        if tri is None or tri.shape[0] != e - a:
            tri = torch.ones(e - a, e - a, device=q.device).tril()
        local = (qc @ kc.transpose(-1, -2)) * tri                                  # (B, H, c, c)
        num = qc @ state + local @ vc
        den = (qc * norm).sum(-1, keepdim=True) + local.sum(-1, keepdim=True)
        out[:, :, a:e] = num / den.clamp_min(1e-9)
        state = state + kc.transpose(-1, -2) @ vc
        norm = norm + kc.sum(2, keepdim=True)
    return out.to(q.dtype)


# ---------------------------------------------------------------- Nystrom landmarks
def _segment_means(x: torch.Tensor, valid: torch.Tensor, size: int):
    """Means of `size` consecutive positions over real tokens only. x (B, h, T, D), valid (B, T)
    -> (B, h, ceil(T / size), D), the real-token count of each segment (B, m) and whether it has any."""
    bsz, h, t, d = x.shape
    m = -(-t // size)
    pad = m * size - t
    w = F.pad(valid.float(), (0, pad)).view(bsz, 1, m, size, 1)
    xs = F.pad(x.float(), (0, 0, 0, pad)).view(bsz, h, m, size, d)
    cnt = w.sum(3)                                                                 # (B, 1, m, 1)
    return (xs * w).sum(3) / cnt.clamp_min(1.0), cnt[:, 0, :, 0], cnt[:, 0, :, 0] > 0


def nystrom(q, k, v, key_mask=None, causal=False, scale=None, landmarks: int = 64):
    """Nystromformer: softmax(Q K^T) ~ softmax(Q K~^T) pinv(softmax(Q~ K~^T)) softmax(Q~ K^T),
    with `landmarks` segment means of the queries and keys (Q~, K~). O(T x landmarks).
    Bidirectional only. With landmarks >= T it is full attention (computed as such)."""
    _check_bidirectional("nystrom", causal)
    if not isinstance(landmarks, int) or landmarks < 1:
        raise ConfigError(f"nystrom: landmarks={landmarks!r}; accepted: an integer >= 1")
    bsz, h, t, d = q.shape
    if landmarks >= t:                              # a landmark per token: that is full attention
        return eager(q, k, v, key_mask, False, scale)
    sc = _scale(q, scale)
    kk, vv = _repeat_kv(k, h).float(), _repeat_kv(v, h).float()
    valid = key_mask.bool() if key_mask is not None else torch.ones(bsz, t, dtype=torch.bool, device=q.device)
    size = -(-t // landmarks)
    ql, _, ok = _segment_means(q, valid, size)
    kl, _, _ = _segment_means(kk, valid, size)
    okm = ok[:, None, None, :]                                                     # (B, 1, 1, m)
    k1 = torch.softmax(((q.float() @ kl.transpose(-1, -2)) * sc).masked_fill(~okm, float("-inf")), -1)
    k2 = torch.softmax(((ql @ kl.transpose(-1, -2)) * sc).masked_fill(~okm, float("-inf")), -1).nan_to_num(0.0)
    k3, _ = _softmax_attend((ql @ kk.transpose(-1, -2)) * sc, valid[:, None, None, :], vv)  # (B, H, m, D)
    return (k1 @ (_iterative_pinv(k2) @ k3)).nan_to_num(0.0).to(q.dtype)


def _iterative_pinv(a: torch.Tensor, iters: int = 6) -> torch.Tensor:
    """Nystromformer's Newton-Schulz approximation of pinv(a) for row-stochastic a (B, H, m, m):
    better behaved than an exact pseudo-inverse of a near-singular landmark kernel."""
    eye = torch.eye(a.shape[-1], device=a.device)
    z = a.transpose(-1, -2) / (a.abs().sum(-1).amax(-1) * a.abs().sum(-2).amax(-1))[..., None, None]
    for _ in range(iters):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


# ---------------------------------------------------------------- pooled keys and values
def pooled(q, k, v, key_mask=None, causal=False, scale=None, stride: int = 4):
    """Sub-sampled keys and values (Funnel / Linformer-style, no training): every `stride`
    consecutive keys and values are averaged (over real tokens only) and each pooled key's
    score gets + log(count), so it stands for the tokens it replaced. T x T/stride. Bidirectional
    only. Exact with stride=1."""
    _check_bidirectional("pooled", causal)
    if not isinstance(stride, int) or stride < 1:
        raise ConfigError(f"pooled: stride={stride!r}; accepted: an integer >= 1")
    bsz, h, t, d = q.shape
    if stride == 1:
        return eager(q, k, v, key_mask, False, scale)
    valid = key_mask.bool() if key_mask is not None else torch.ones(bsz, t, dtype=torch.bool, device=q.device)
    kp, cnt, ok = _segment_means(k, valid, stride)
    vp, _, _ = _segment_means(v, valid, stride)
    # + log(count) on each pooled key's score, and -inf where a segment holds no real token: one
    # additive (B, 1, 1, T/stride) bias, so the fused SDPA kernel does the rest (T x T/stride)
    bias = cnt.clamp_min(1).log().to(q.dtype).masked_fill(~ok, float("-inf"))[:, None, None, :]
    out = F.scaled_dot_product_attention(q, kp.to(q.dtype), vp.to(q.dtype), attn_mask=bias, scale=_scale(q, scale),
                                         enable_gqa=h != kp.shape[1])
    return out.nan_to_num(0.0)

