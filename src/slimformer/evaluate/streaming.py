"""Perplexity of a causal LM over a long text read as one stream through a KV cache, in chunks:
what a long-input setting (attention sinks, heavy hitters, a quantized cache) costs in quality,
and how much cache memory it holds at most. The caches themselves come from
`slimformer.attention.kv_cache` (or any transformers Cache); `evaluate` uses this when
`TaskOptions.kv_cache` is set."""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F


def cache_bytes(cache) -> int:
    """Bytes a cache's layers hold (those that can say: `nbytes()`; codes and scales included)."""
    return sum(layer.nbytes() for layer in getattr(cache, "layers", []) if hasattr(layer, "nbytes"))


@torch.inference_mode()
def stream_perplexity(model, ids: torch.Tensor, cache, chunk: int = 64, max_context: int | None = None,
                      progress: bool = False) -> dict:
    """ids: (1, N) token ids. The text is fed `chunk` tokens at a time; every token is scored
    given what the cache holds. With `max_context` (a full cache only), the stream restarts
    every `max_context` tokens (a 2k-context model scored on 2k windows). Returns perplexity,
    tokens scored, the cache's peak bytes and seconds."""
    hf = getattr(model, "model", model)
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise ValueError(f"stream_perplexity takes ids of shape (1, N), got {tuple(ids.shape)}")
    n = ids.shape[1]
    nll, count, peak = 0.0, 0, 0
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="stream perplexity", unit="tok")
    start = 0
    for a in range(0, n - 1, chunk):
        if max_context and a - start >= max_context:
            cache = type(cache)(layers=[type(layer)() for layer in cache.layers])
            start = a
        e = min(a + chunk, n - 1)
        x = ids[:, a:e]
        pos = torch.arange(a - start, e - start, device=ids.device)
        out = hf(input_ids=x, past_key_values=cache, use_cache=True, cache_position=pos, position_ids=pos[None])
        logits = out.logits[0].float()                                              # (c, V)
        nll += F.cross_entropy(logits, ids[0, a + 1:e + 1], reduction="sum").item()
        count += e - a
        peak = max(peak, cache_bytes(cache))
        if bar is not None:
            bar.update(e - a)
    if bar is not None:
        bar.close()
    return {"perplexity": math.exp(nll / max(count, 1)), "tokens": count, "peak_cache_bytes": peak,
            "seconds": time.perf_counter() - t0}
