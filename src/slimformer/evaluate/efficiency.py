"""Size, latency, throughput and memory, measured the same way for every model.

Timing: `torch.set_num_threads(threads)`, warm-up runs, then the median (p50) and p95 of
repeats. Inputs are real token ids (from the task's texts or the packaged sample), truncated or
repeated to exactly `seq_len` tokens so every model sees the same shape.
"""
from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.errors import DataError
from ..core.targets import module_part


@dataclass(frozen=True)
class TimingOptions:
    seq_len: int = 128
    batch_size: int = 32  # throughput batch; latency is always batch 1
    warmup: int = 3
    repeats: int = 20
    throughput_repeats: int = 5
    threads: int | None = None  # None: torch's current setting
    # causal LMs: prefill tokens/s at 1 x prefill_len; decode tokens/s at batch 1 and 8 after a
    # decode_prompt-token prompt, decode_tokens greedy steps through the KV cache (median of repeats)
    prefill_len: int = 256
    decode_prompt: int = 32
    decode_tokens: int = 32
    decode_batches: tuple[int, ...] = (1, 8)
    generation_repeats: int = 3


def saved_bytes(sm) -> dict:
    """Bytes on disk of the saved model: weight files, and everything (config, tokenizer...)."""
    from ..models.saving import save

    if hasattr(sm, "disk_bytes"):  # an artifact already on disk (ONNX export)
        return sm.disk_bytes()
    if getattr(sm, "stream", None) is not None:  # a model streamed from its shards: what it reads or wrote
        return sm.stream.saved_bytes()
    with tempfile.TemporaryDirectory() as d:
        folder = save(sm, Path(d) / "m")
        weights = sum(f.stat().st_size for f in folder.rglob("*") if f.suffix in (".safetensors", ".onnx", ".data"))
        total = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return {"bytes": weights, "bytes_total": total}


def bytes_by_module(model) -> dict[str, int]:
    """Bytes of a model's tensors (parameters and buffers, each stored tensor once) by part: the
    name up to its layer index (`encoder.layer.3`), else its first two components (`embeddings.
    word_embeddings`), in model order."""
    out: dict[str, int] = {}
    seen = set()
    for name, t in model.state_dict(keep_vars=False).items():
        if not isinstance(t, torch.Tensor) or t.numel() == 0:
            continue
        key = (t.data_ptr(), t.numel())
        if key in seen:
            continue
        seen.add(key)
        part = module_part(name)
        out[part] = out.get(part, 0) + t.numel() * t.element_size()
    return out


def make_inputs(sm, texts: list[str], batch: int, seq_len: int) -> dict[str, torch.Tensor]:
    """A (batch, seq_len) batch of real token ids, no padding."""
    limit = getattr(getattr(getattr(sm, "model", None), "config", None), "max_position_embeddings", None)
    if isinstance(limit, int) and seq_len > limit:
        raise DataError(f"sequence length {seq_len} is longer than the model's {limit} positions; accepted: 1..{limit}")
    if seq_len < 1 or batch < 1:
        raise DataError(f"batch {batch} x sequence length {seq_len}; accepted: integers >= 1")
    tok = sm.tokenizer
    ids = []
    for t in texts:
        ids.extend(tok(t, add_special_tokens=False)["input_ids"])
        if len(ids) >= batch * seq_len:
            break
    if not ids:
        raise DataError("no tokens to time with")
    while len(ids) < batch * seq_len:
        ids = ids + ids
    x = torch.tensor(ids[: batch * seq_len]).view(batch, seq_len)
    enc = {"input_ids": x, "attention_mask": torch.ones_like(x)}
    if sm.kind == "seq2seq-lm":
        from ..data.calibration import decoder_inputs

        enc["decoder_input_ids"] = decoder_inputs(sm, x[:, :min(seq_len, 32)])
    return enc


def _forward(sm, enc) -> None:
    kw = {"use_cache": False} if sm.kind in ("causal-lm", "seq2seq-lm") else {}
    sm.model(**enc, **kw)


@torch.inference_mode()
def time_forward(sm, enc, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        _forward(sm, enc)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _forward(sm, enc)
        times.append(time.perf_counter() - t0)
    return times


@torch.inference_mode()
def interleaved_seconds(models: dict, enc: dict, rounds: int, pause: float = 0.0) -> dict:
    """Median seconds of one forward of `enc` per model, timed interleaved (a, b, a, b, ...)
    after one warm-up each, so a slow phase of the machine hits every model alike. pause:
    seconds of sleep after each call (lets ONNX Runtime's spinning threads settle)."""
    times = {k: [] for k in models}
    for m in models.values():
        m.model(**enc)
    for _ in range(rounds):
        for k, m in models.items():
            t0 = time.perf_counter()
            m.model(**enc)
            times[k].append(time.perf_counter() - t0)
            if pause:
                time.sleep(pause)
    return {k: statistics.median(v) for k, v in times.items()}


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_memory_mb(sm, enc) -> float:
    """Model tensors in memory + the peak growth of resident memory during one forward pass."""
    if hasattr(sm, "memory_bytes"):  # an artifact run by another runtime (ONNX Runtime)
        model_bytes = sm.memory_bytes()
    else:
        model_bytes = sum(t.numel() * t.element_size() for t in sm.model.state_dict().values())
    base, peak, stop = _rss(), [0], threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.0005)

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    with torch.inference_mode():
        _forward(sm, enc)
    stop.set()
    th.join()
    return (model_bytes + max(0, peak[0] - base)) / 2**20


@torch.inference_mode()
def decode_seconds(sm, prompt: torch.Tensor, steps: int) -> float:
    """Wall time of `steps` greedy decoding steps (one token each, through the model's KV cache)
    after prefilling `prompt` (batch, T); the prefill is not counted. Models with their own
    decoding loop (an ONNX Runtime KV-cache graph) time it themselves."""
    if not isinstance(sm.model, torch.nn.Module):
        return sm.decode_seconds(prompt, steps)
    import inspect

    # transformers >= 5.2x names the cache argument and output `cache` (`past_key_values` before)
    key = "cache" if "cache" in inspect.signature(sm.model.forward).parameters else "past_key_values"
    out = sm.model(input_ids=prompt, attention_mask=torch.ones_like(prompt), use_cache=True)
    past, nxt = out.get(key), out.logits[:, -1:].argmax(-1)
    mask = torch.ones(prompt.shape[0], prompt.shape[1] + steps, dtype=prompt.dtype)
    t0 = time.perf_counter()
    for i in range(steps):
        out = sm.model(input_ids=nxt, attention_mask=mask[:, : prompt.shape[1] + i + 1], use_cache=True, **{key: past})
        past, nxt = out.get(key), out.logits[:, -1:].argmax(-1)
    return time.perf_counter() - t0


def generation_speed(sm, texts: list[str], opts: TimingOptions = TimingOptions()) -> dict:
    """A causal LM's generation speed: {"prefill_tokens_per_s": 1 x prefill_len in one forward,
    "decode_tokens_per_s": batch 1, "decode_tokens_per_s_batch8": ... (tokens of all rows)};
    medians of `generation_repeats` after one warm-up."""
    limit = getattr(getattr(sm, "config", None), "max_position_embeddings", None)
    if limit is None and isinstance(sm.model, torch.nn.Module):
        from ..adapters import get_adapter

        limit = get_adapter(sm.model).max_positions(sm.model)
    limit = limit or opts.prefill_len
    prefill = min(opts.prefill_len, limit)
    n_prompt = max(1, min(opts.decode_prompt, limit - opts.decode_tokens))
    out = {}
    long = make_inputs(sm, texts, 1, prefill)
    times = time_forward(sm, long, 1, opts.generation_repeats)
    out["prefill_tokens_per_s"] = prefill / statistics.median(times)
    for b in opts.decode_batches:
        prompt = make_inputs(sm, texts, b, n_prompt)["input_ids"]
        decode_seconds(sm, prompt, 2)
        secs = statistics.median(decode_seconds(sm, prompt, opts.decode_tokens) for _ in range(opts.generation_repeats))
        out["decode_tokens_per_s" + ("" if b == 1 else f"_batch{b}")] = b * opts.decode_tokens / secs
    return out


def measure(sm, texts: list[str], opts: TimingOptions = TimingOptions()) -> tuple[dict, dict]:
    """Returns (efficiency figures, settings used)."""
    prev = torch.get_num_threads()
    threads = opts.threads or prev
    torch.set_num_threads(threads)
    try:
        eff = {"params": sm.num_params()}
        eff.update(saved_bytes(sm))
        one = make_inputs(sm, texts, 1, opts.seq_len)
        lat = sorted(time_forward(sm, one, opts.warmup, opts.repeats))
        eff["latency_ms_p50"] = statistics.median(lat) * 1e3
        eff["latency_ms_p95"] = lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))] * 1e3
        big = make_inputs(sm, texts, opts.batch_size, opts.seq_len)
        tp = time_forward(sm, big, 1, opts.throughput_repeats)
        eff["throughput"] = opts.batch_size / statistics.median(tp)
        eff["peak_memory_mb"] = peak_memory_mb(sm, big)
        if sm.kind == "causal-lm" and (isinstance(sm.model, torch.nn.Module)
                                       or (getattr(sm, "meta", None) or {}).get("kv_cache")):
            eff.update(generation_speed(sm, texts, opts))
    finally:
        torch.set_num_threads(prev)
    settings = {"seq_len": opts.seq_len, "latency_batch": 1, "throughput_batch": opts.batch_size,
                "warmup": opts.warmup, "repeats": opts.repeats, "throughput_repeats": opts.throughput_repeats,
                "threads": threads}
    if sm.kind == "causal-lm":
        settings.update(prefill_len=opts.prefill_len, decode_prompt=opts.decode_prompt,
                        decode_tokens=opts.decode_tokens, decode_batches=list(opts.decode_batches),
                        generation_repeats=opts.generation_repeats)
    return eff, settings
