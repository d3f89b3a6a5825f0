"""Calibration data: a deterministic sample of texts, tokenized into padded batches."""
from __future__ import annotations

import os
import random
from pathlib import Path

import torch

from ..core.errors import ConfigError, DataError
from .readers import read_text
from .samples import sample_sentences  # noqa: F401  (re-exported)
from .tasks import Task


def calibration_texts(source, n: int = 128, seed: int = 0) -> list[str]:
    """n texts from a Task (`task.texts()`), a list of strings, or a plain text file (one text per
    non-empty line). Deterministic for a seed; without replacement when the source has at least n
    texts, otherwise every text is used as evenly as possible (whole shuffled passes)."""
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"n: expected an integer >= 1, got {n!r}")
    if isinstance(source, Task):
        texts, where = source.texts(), f"task {source.source or source.kind}"
    elif isinstance(source, (str, os.PathLike)):
        texts, where = read_text(Path(source)).split("\n"), str(source)
    elif isinstance(source, (list, tuple)):
        bad = next((i for i, t in enumerate(source) if not isinstance(t, str)), None)
        if bad is not None:
            raise DataError(f"texts item {bad}: expected a string, got {type(source[bad]).__name__}")
        texts, where = list(source), "texts"
    else:
        raise DataError(f"calibration source: expected a Task, a list of strings or a text file "
                        f"path, got {type(source).__name__}")
    texts = [t.strip() for t in texts if t.strip()]
    if not texts:
        raise DataError(f"{where}: expected at least one non-empty text, found none")
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        out += rng.sample(texts, min(len(texts), n - len(out)))
    return out


def calibration_batches(texts, tokenizer, batch_size: int = 8,
                        max_length: int = 128) -> list[dict[str, torch.Tensor]]:
    """Tokenize (truncating to max_length) and pad each batch to its longest row.

    Padding is done here, on the tokenizer's `padding_side`, with its pad token, else its EOS
    token, else 0, so tokenizers without a pad token (GPT-2) work and are not modified.
    Every key that holds one id list per text (input_ids, attention_mask, token_type_ids...)
    becomes a (B, T) long tensor; input_ids pad with the pad id, everything else with 0.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
    if not isinstance(max_length, int) or max_length < 1:
        raise ConfigError(f"max_length: expected an integer >= 1, got {max_length!r}")
    if isinstance(texts, str):
        raise DataError("calibration_batches: expected a list of texts, got a single str")
    texts = list(texts)
    if not texts:
        raise DataError("calibration_batches: expected at least one text, got none")
    pad_id = next((i for i in (getattr(tokenizer, "pad_token_id", None),
                               getattr(tokenizer, "eos_token_id", None)) if i is not None), 0)
    left = getattr(tokenizer, "padding_side", "right") == "left"
    batches = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i:i + batch_size], truncation=True, max_length=max_length)
        ids = enc["input_ids"]
        width = max(len(r) for r in ids)
        enc = dict(enc)
        enc.setdefault("attention_mask", [[1] * len(r) for r in ids])
        batch = {}
        for key, rows in enc.items():
            if not (isinstance(rows, list) and len(rows) == len(ids)
                    and all(isinstance(r, list) and len(r) == len(x) for r, x in zip(rows, ids))):
                continue  # not one id list per text (e.g. offsets): leave it out
            fill = pad_id if key == "input_ids" else 0
            batch[key] = torch.tensor([_pad(r, fill, width, left) for r in rows], dtype=torch.long)
        batches.append(batch)
    return batches


def _pad(row: list, fill: int, width: int, left: bool) -> list:
    pad = [fill] * (width - len(row))
    return pad + row if left else row + pad


def model_batches(sm, texts: list[str], seq_len: int, max_seqs: int = 128) -> list[dict]:
    """Calibration token batches for a SlimModel: causal LMs get the texts joined (EOS between)
    and cut into seq_len-token chunks, one per batch; other models get batches of 8 texts
    truncated to seq_len (encoder-decoders also get decoder inputs: the text shifted right)."""
    if not texts:
        raise DataError("calibration needs data (texts); none was given (pass data=..., or --data PATH)")
    tok = sm.tokenizer
    if sm.kind == "causal-lm":
        sep = tok.eos_token or "\n"
        ids = tok(sep.join(texts), add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        if len(ids) < seq_len:
            return [{"input_ids": ids.unsqueeze(0)}]
        n = min(max_seqs, len(ids) // seq_len)
        return [{"input_ids": ids[i * seq_len:(i + 1) * seq_len].unsqueeze(0)} for i in range(n)]
    out = []
    for i in range(0, min(len(texts), max_seqs), 8):
        enc = sm.tokenize(texts[i:i + 8], seq_len)
        if sm.kind == "seq2seq-lm":
            enc["decoder_input_ids"] = decoder_inputs(sm, enc["input_ids"])
        out.append(enc)
    return out


def decoder_inputs(sm, input_ids):
    """Decoder inputs of an encoder-decoder fed `input_ids` as source and target (the adapter's
    decoder start token, then the ids shifted right)."""
    from ..adapters import get_adapter

    return get_adapter(sm.model).decoder_inputs(sm.model, input_ids)


def step_batches(sm, cfg, run) -> list[dict]:
    """The calibration batches of a method step: the run's calibration texts as token batches of
    cfg.calibration_tokens, at most cfg.calibration_samples of them; a one-line error without texts."""
    if not run.calibration:
        raise DataError(f"{cfg.method} needs calibration data (texts); none was given (pass data=..., or --data PATH)")
    return model_batches(sm, list(run.calibration), cfg.calibration_tokens, max_seqs=cfg.calibration_samples)
