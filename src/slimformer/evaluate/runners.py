"""Task metrics: run a model over a task's examples and score it (the scoring is in metrics.py)."""
from __future__ import annotations

import contextlib

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..core.errors import SlimformerError
from . import metrics as M

# which model kinds can do which task
TASK_KINDS_FOR_MODEL = {
    "stsb": ("embedding",),
    "classification": ("classification",),
    "lm": ("causal-lm",),
    "translation": ("seq2seq-lm",),
    "summarization": ("seq2seq-lm",),
}


@dataclass(frozen=True)
class TaskOptions:
    batch_size: int = 32
    max_length: int = 128
    ppl_window: int = 1024  # tokens per perplexity window
    ppl_stride: int = 512  # new tokens scored per window
    ppl_max_tokens: int | None = 16384  # first N tokens of the text; None = all
    gen_max_new_tokens: int = 64
    gen_num_beams: int = 1
    progress: bool = True
    # perplexity through a KV cache instead of strided windows: a callable returning a fresh
    # transformers Cache (e.g. lambda: slimformer.attention.kv_cache(model, "sinks")); the text is
    # read as one stream, `kv_chunk` tokens at a time, and the cache's peak bytes are reported
    kv_cache: object = None
    kv_chunk: int = 64


def check_task(sm, task_kind: str) -> None:
    ok = TASK_KINDS_FOR_MODEL.get(task_kind)
    if ok is None:
        raise SlimformerError(f"unknown task {task_kind!r}; accepted: {', '.join(TASK_KINDS_FOR_MODEL)}")
    if sm.kind not in ok:
        raise SlimformerError(
            f"task {task_kind!r} needs a model of kind {' or '.join(ok)}, but {sm.source} is a {sm.kind} model"
        )


def _bar(it, opts, desc, total=None):
    return tqdm(it, desc=desc, total=total, disable=not opts.progress, leave=False)


def run_stsb(sm, task, opts: TaskOptions) -> tuple[dict, dict]:
    s1 = [e[0] for e in task.examples]
    s2 = [e[1] for e in task.examples]
    gold = [e[2] for e in task.examples]
    e1 = sm.embed(s1, opts.batch_size)
    e2 = sm.embed(s2, opts.batch_size)
    cos = torch.nn.functional.cosine_similarity(e1, e2).tolist()
    return {"spearman": M.spearman(cos, gold), "pearson": M.pearson(cos, gold)}, {"n": len(gold)}


@torch.inference_mode()
def run_classification(sm, task, opts: TaskOptions) -> tuple[dict, dict]:
    preds, gold = [], [e[1] for e in task.examples]
    texts = [e[0] for e in task.examples]
    n_labels = getattr(sm.config, "num_labels", None)
    bad = sorted({g for g in gold if n_labels is not None and not 0 <= g < n_labels})
    if bad:
        from ..core.errors import DataError

        raise DataError(f"{task.source or 'the data'}: labels {bad[:5]} are outside this classifier's {n_labels} "
                        f"classes; accepted labels: 0..{n_labels - 1}")
    for i in _bar(range(0, len(texts), opts.batch_size), opts, "classify"):
        enc = sm.tokenize(texts[i : i + opts.batch_size], opts.max_length)
        preds.extend(sm.model(**enc).logits.argmax(-1).tolist())
    avg = "binary" if set(gold) | set(preds) <= {0, 1} else "macro"
    return {"accuracy": M.accuracy(preds, gold), "f1": M.f1(preds, gold, average=avg)}, {"n": len(gold)}


def lm_token_ids(sm, task, opts: TaskOptions) -> torch.Tensor:
    text = "\n".join(task.examples) if len(task.examples) > 1 else task.examples[0]
    ids = sm.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    if opts.ppl_max_tokens:
        ids = ids[: opts.ppl_max_tokens]
    return ids


@torch.inference_mode()
def run_lm(sm, task, opts: TaskOptions) -> tuple[dict, dict]:
    """Strided-window perplexity (transformers' recipe): each window holds `window` tokens, of
    which the last `stride` (the ones not scored before) are scored with the rest as context."""
    ids = lm_token_ids(sm, task, opts)
    if opts.kv_cache is not None:
        from .streaming import stream_perplexity

        r = stream_perplexity(sm, ids[None], opts.kv_cache(), chunk=opts.kv_chunk, progress=opts.progress)
        return {"perplexity": r["perplexity"]}, {
            "ppl_mode": "stream through a KV cache", "kv_chunk": opts.kv_chunk, "ppl_tokens": int(len(ids)),
            "ppl_scored": r["tokens"], "peak_cache_mb": r["peak_cache_bytes"] / 1e6}
    window = min(opts.ppl_window, getattr(sm.config, "max_position_embeddings", opts.ppl_window))
    stride = min(opts.ppl_stride, window)
    windows, prev_end = [], 0
    for begin in range(0, len(ids), stride):
        end = min(begin + window, len(ids))
        x = ids[begin:end].unsqueeze(0)
        target = x[0, 1:].clone()
        target[: max(0, target.numel() - (end - prev_end))] = -100  # score only the tokens not scored before
        windows.append((x, target))
        prev_end = end
        if end == len(ids):
            break
    settings = {"ppl_window": window, "ppl_stride": stride, "ppl_tokens": int(len(ids))}
    if getattr(sm, "stream", None) is not None:  # bigger than memory: all windows through one layer at a time
        from ..models.sequential import final_hidden

        hidden = final_hidden(sm, [{"input_ids": x} for x, _ in windows], desc="perplexity, layer by layer")
        settings["ppl_mode"] = "layer by layer (streamed from the shards)"
        with _output_layers(sm) as out:
            nll, n = _nll((out(h), t) for h, (_, t) in zip(hidden, windows))  # one window's logits at a time
    else:
        nll, n = 0.0, 0
        for i in _bar(range(len(windows)), opts, "perplexity"):
            x, target = windows[i]
            a, b = _nll([(sm.model(input_ids=x, use_cache=False).logits, target)])
            nll, n = nll + a, n + b
    return {"perplexity": M.perplexity_from_nll(nll, n)}, {**settings, "ppl_scored": n}


def _nll(pairs) -> tuple[float, int]:
    """Summed cross-entropy and scored tokens of (logits (1, T, V), target (T-1,) with -100 unscored)."""
    nll, n = 0.0, 0
    for logits, target in pairs:
        loss = torch.nn.functional.cross_entropy(logits[0, :-1].float(), target, ignore_index=-100, reduction="sum")
        nll, n = nll + loss.item(), n + int((target != -100).sum())
    return nll, n


@contextlib.contextmanager
def _output_layers(sm):
    """Inside: a function final hidden state -> logits (final norm, LM head), with the streamed
    model's norm and head (and the embedding a tied head reads) in memory."""
    from ..models.streaming import materialized

    base = sm.model.get_decoder() if hasattr(sm.model, "get_decoder") else sm.model.base_model
    norm = next((getattr(base, k) for k in ("norm", "ln_f", "final_layer_norm") if hasattr(base, k)), None)
    if norm is None:
        raise ValueError(f"{type(sm.model).__name__}: no final norm found for layer-by-layer perplexity")
    head, emb = sm.model.get_output_embeddings(), sm.model.get_input_embeddings()
    names = {id(m): n for n, m in sm.model.named_modules()}
    own = any(True for _ in head.parameters()) or any(True for _ in head.buffers())
    tied = getattr(head, "weight", None) is getattr(emb, "weight", 0)
    tail = [names[id(norm)], names[id(head)]] + ([names[id(emb)]] if tied or not own else [])
    with materialized(sm, tail, torch.float32, write=False):
        yield lambda h: head(norm(h))


@torch.inference_mode()
def generate(sm, sources: list[str], opts: TaskOptions, desc: str) -> list[str]:
    out = []
    for i in _bar(range(0, len(sources), opts.batch_size), opts, desc):
        enc = sm.tokenize(sources[i : i + opts.batch_size], opts.max_length)
        gen = sm.model.generate(**enc, max_new_tokens=opts.gen_max_new_tokens, num_beams=opts.gen_num_beams,
                                do_sample=False)
        out.extend(sm.tokenizer.batch_decode(gen, skip_special_tokens=True))
    return [o.strip() for o in out]


def run_translation(sm, task, opts: TaskOptions) -> tuple[dict, dict]:
    hyps = generate(sm, [e[0] for e in task.examples], opts, "translate")
    refs = [e[1] for e in task.examples]
    bleu, sig = M.bleu_with_signature(hyps, refs)
    bleu_lc, sig_lc = M.bleu_with_signature(hyps, refs, lowercase=True)  # what published Multi30k figures use
    chrf, sig_c = M.chrf_with_signature(hyps, refs)
    return {"bleu": bleu, "bleu_lowercase": bleu_lc, "chrf": chrf}, {
        "n": len(refs), "num_beams": opts.gen_num_beams, "max_new_tokens": opts.gen_max_new_tokens,
        "bleu_signature": sig, "bleu_lowercase_signature": sig_lc, "chrf_signature": sig_c}


def run_summarization(sm, task, opts: TaskOptions) -> tuple[dict, dict]:
    hyps = generate(sm, [e[0] for e in task.examples], opts, "summarize")
    refs = [e[1] for e in task.examples]
    return M.rouge(hyps, refs), {"n": len(refs), "num_beams": opts.gen_num_beams}


RUNNERS = {
    "stsb": run_stsb,
    "classification": run_classification,
    "lm": run_lm,
    "translation": run_translation,
    "summarization": run_summarization,
}
