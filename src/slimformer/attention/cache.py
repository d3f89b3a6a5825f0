"""KV caches for long inputs in bounded memory and for smaller caches, as transformers cache
layers (so `model.generate(..., past_key_values=cache)` and any forward with a cache use them):

- `SinkWindowLayer` (StreamingLLM): the first `sinks` tokens plus the last `window` tokens. The
  sink keys are re-rotated (rotary embeddings) to sit right before the window, so relative
  distances stay within what the model was trained on however long the stream grows.
- `HeavyHitterLayer` (H2O): the last `window` tokens plus the `heavy` older tokens that have
  received the most attention so far (per key/value head); the attention function reports the
  attention each cached key receives (`observe`). With rotary positions the kept heavy hitters
  are re-rotated to sit right before the window, as the sinks are (without it, old heavy
  hitters end up further away than the model's trained context and a long stream collapses).
- `QuantizedKVLayer` (KIVI): keys quantized per channel over blocks of `group` tokens, values
  per token, int8 or int4 (two codes a byte), scales and zero points in fp16; the most recent
  `residual` tokens stay in full precision.
Memory is what the layers hold: `cache_bytes(cache)`.
"""
from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer

from ..adapters import get_adapter
from ..core.errors import ConfigError
from ..core.packing import pack_int4, unpack_int4


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


def shift_rope(keys: torch.Tensor, inv_freq: torch.Tensor, shift) -> torch.Tensor:
    """Keys rotated at position p (rotate-half RoPE) -> the same keys at position p + shift.
    shift: an int, or a tensor of per-key shifts broadcastable to keys.shape[:-1]."""
    if isinstance(shift, torch.Tensor):
        ang = shift.to(torch.float64)[..., None] * inv_freq.to(torch.float64)      # (..., L, D/2)
    else:
        ang = shift * inv_freq.to(torch.float64)                                 # (D/2,)
    cos = torch.cat([ang.cos(), ang.cos()], dim=-1).to(keys.dtype)
    sin = torch.cat([ang.sin(), ang.sin()], dim=-1).to(keys.dtype)
    return keys * cos + rotate_half(keys) * sin


class _Layer(DynamicLayer):
    """A cache layer whose stored length may differ from the tokens seen (eviction)."""

    def lazy_initialization(self, key_states, value_states) -> None:
        super().lazy_initialization(key_states, value_states)
        self.seen = 0

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def nbytes(self) -> int:
        if not self.is_initialized or self.keys is None:
            return 0
        return self.keys.numel() * self.keys.element_size() + self.values.numel() * self.values.element_size()


class SinkWindowLayer(_Layer):
    is_croppable = False

    def __init__(self, sinks: int, window: int, inv_freq: torch.Tensor | None):
        super().__init__()
        self.sinks, self.window, self.inv_freq = sinks, window, inv_freq
        self.evicted = 0

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        keys = torch.cat([self.keys, key_states], dim=-2)                          # (B, Hkv, L, D)
        values = torch.cat([self.values, value_states], dim=-2)
        s = self.sinks
        out_k = keys
        if self.evicted and self.inv_freq is not None:                             # sinks just before the window
            out_k = torch.cat([shift_rope(keys[:, :, :s], self.inv_freq, self.evicted), keys[:, :, s:]], dim=-2)
        n = keys.shape[-2] - (s + self.window)
        if n > 0:
            self.keys = torch.cat([keys[:, :, :s], keys[:, :, s + n:]], dim=-2)
            self.values = torch.cat([values[:, :, :s], values[:, :, s + n:]], dim=-2)
            self.evicted += n
        else:
            self.keys, self.values = keys, values
        return out_k, values


class HeavyHitterLayer(_Layer):
    is_croppable = False

    def __init__(self, heavy: int, window: int, inv_freq: torch.Tensor | None = None):
        super().__init__()
        self.heavy, self.window, self.inv_freq = heavy, window, inv_freq
        self.scores = None                                                          # (B, Hkv, L) attention received
        self.pos = None                                                             # (B, Hkv, L) positions of the keys

    def observe(self, probs_sum: torch.Tensor) -> None:
        """Attention received by each key of the last `update` (B, Hkv, L), summed over queries."""
        n = probs_sum.shape[-1]
        old = self.scores if self.scores is not None else probs_sum.new_zeros(probs_sum.shape[:-1] + (0,))
        grown = torch.cat([old, old.new_zeros(old.shape[:-1] + (n - old.shape[-1],))], dim=-1) if n > old.shape[-1] \
            else old
        self._pending = grown + probs_sum

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.scores = None
            self.pos = torch.zeros(key_states.shape[:2] + (0,), dtype=torch.long, device=key_states.device)
        self._apply_pending()
        b, h, n = key_states.shape[:3]
        new = torch.arange(self.seen, self.seen + n, device=key_states.device).expand(b, h, n)
        self.seen += n
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        self.pos = torch.cat([self.pos, new], dim=-1)
        length = self.keys.shape[-2]
        if self.inv_freq is None or length == self.seen:                            # nothing evicted yet
            return self.keys, self.values
        # rotary models: the kept heavy hitters are re-rotated to sit right before the window (as
        # the sinks of StreamingLLM), so no relative distance exceeds the cache's length
        target = torch.arange(self.seen - length, self.seen, device=self.pos.device)
        return shift_rope(self.keys, self.inv_freq, target - self.pos), self.values

    def _apply_pending(self) -> None:
        """Fold the scores observed for the last step in, then evict down to heavy + window."""
        pending = getattr(self, "_pending", None)
        if pending is None:
            return
        self._pending = None
        self.scores = pending
        b, h, length, d = self.keys.shape
        if length <= self.heavy + self.window:
            return
        old = length - self.window
        keep = self.scores[:, :, :old].topk(self.heavy, dim=-1).indices.sort(-1).values   # (B, Hkv, heavy)
        idx = torch.cat([keep, torch.arange(old, length, device=keep.device).expand(b, h, self.window)], dim=-1)
        g = idx[..., None].expand(b, h, idx.shape[-1], d)
        self.keys, self.values = self.keys.gather(2, g), self.values.gather(2, g)
        self.scores = self.scores.gather(2, idx)
        self.pos = self.pos.gather(2, idx)


class QuantizedKVLayer(_Layer):
    is_croppable = False

    def __init__(self, bits: int = 4, group: int = 64, residual: int = 64):
        super().__init__()
        self.bits, self.group, self.residual = bits, group, residual
        self.blocks: list[tuple] = []

    def _quant(self, x: torch.Tensor, dim: int):
        """Asymmetric min-max codes of x along `dim` (the axis sharing one scale and zero)."""
        lo, hi = x.amin(dim, keepdim=True), x.amax(dim, keepdim=True)
        maxq = 2 ** self.bits - 1
        scale = ((hi - lo) / maxq).clamp_min(1e-8)
        codes = ((x - lo) / scale).round().clamp(0, maxq).to(torch.uint8)
        if self.bits == 4:
            codes = pack_int4(codes)
        return codes, scale.half(), lo.half()

    def _dequant(self, codes, scale, zero, d: int):
        if self.bits == 4:
            codes = unpack_int4(codes, d)
        return codes.float() * scale.float() + zero.float()

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.blocks = []
        self.keys = torch.cat([self.keys, key_states], dim=-2)                   # the full-precision tail
        self.values = torch.cat([self.values, value_states], dim=-2)
        d = key_states.shape[-1]
        past_k = [self._dequant(*kb, d).to(key_states.dtype) for kb, _ in self.blocks]
        past_v = [self._dequant(*vb, d).to(value_states.dtype) for _, vb in self.blocks]
        out_k, out_v = torch.cat(past_k + [self.keys], dim=-2), torch.cat(past_v + [self.values], dim=-2)
        while self.keys.shape[-2] >= self.residual + self.group:                  # the oldest tail block -> codes
            k, v = self.keys[:, :, :self.group], self.values[:, :, :self.group]
            self.blocks.append((self._quant(k, dim=2), self._quant(v, dim=3)))   # keys per channel, values per token
            self.keys, self.values = self.keys[:, :, self.group:], self.values[:, :, self.group:]
        return out_k, out_v

    def get_seq_length(self) -> int:
        if not self.is_initialized:
            return 0
        return self.keys.shape[-2] + self.group * len(self.blocks)

    def nbytes(self) -> int:
        return sum(self.breakdown().values())

    def breakdown(self) -> dict:
        """Bytes held as codes, as fp16 scales + zero points, and as the float tail."""
        out = {"codes": 0, "scales": 0, "float_tail": super().nbytes()}
        for kb, vb in self.blocks:
            for codes, scale, zero in (kb, vb):
                out["codes"] += codes.numel() * codes.element_size()
                out["scales"] += scale.numel() * scale.element_size() + zero.numel() * zero.element_size()
        return out


KINDS = ("full", "sinks", "h2o", "int8", "int4")


def kv_cache(model, kind: str = "sinks", sinks: int = 4, window: int = 1020, heavy: int = 128,
             group: int = 64, residual: int = 64) -> Cache:
    """A transformers Cache for `model` (a SlimModel or transformers decoder LM): "full" (every
    token, float), "sinks" (StreamingLLM: `sinks` + the last `window`), "h2o" (`heavy` most
    attended + the last `window`), "int8" / "int4" (KIVI, `group`-token blocks, the last
    `residual` tokens in float). "sinks" needs rotary positions; "h2o" swaps in the attention
    function that reports what each key receives."""
    hf = getattr(model, "model", model)
    adapter = get_adapter(hf)
    n = len(adapter.layer_containers(hf).get("decoder", []))
    if kind not in KINDS:
        raise ConfigError(f"KV cache {kind!r}; accepted: {', '.join(KINDS)}")
    for name, val in (("sinks", sinks), ("window", window), ("heavy", heavy), ("group", group), ("residual", residual)):
        if not isinstance(val, int) or val < 0 or (name in ("window", "group") and val < 1):
            raise ConfigError(f"KV cache {name}={val!r}; accepted: an integer >= {1 if name in ('window', 'group') else 0}")
    from .hf import observe_attention_, set_attention_

    if kind == "h2o":
        rope = adapter.rope(hf)
        layers = [HeavyHitterLayer(heavy, window, rope[0] if rope is not None else None) for _ in range(n)]
        observe_attention_(model, [info.attention.module for info in adapter.layers(hf)], layers)
        return Cache(layers=layers)
    # the slimformer functions take (B, S) key masks and offset causal masks: right for evicting caches
    attn = getattr(hf.config, "_attn_implementation", None) or "eager"
    if not attn.startswith("slimformer_") or attn.startswith("slimformer_observed"):
        set_attention_(model, "sdpa")
    if kind == "full":
        return Cache(layers=[_Layer() for _ in range(n)])
    if kind == "sinks":
        rope = adapter.rope(hf)
        if rope is None:
            raise ConfigError(f"attention sinks need rotary position embeddings (Llama-family); {type(hf).__name__} "
                              "has absolute positions; use kind h2o, int8 or int4")
        return Cache(layers=[SinkWindowLayer(sinks, window, rope[0]) for _ in range(n)])
    return Cache(layers=[QuantizedKVLayer(8 if kind == "int8" else 4, group, residual) for _ in range(n)])


def cache_bytes(cache: Cache) -> int:
    """Bytes the cache holds (codes, scales and zero points included)."""
    from ..evaluate.streaming import cache_bytes as count

    return count(cache)
