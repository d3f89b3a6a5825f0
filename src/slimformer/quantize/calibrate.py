"""Calibration passes: feed calibration texts through the model and let hooks observe the
inputs of chosen Linear layers (for GPTQ Hessians, static activation scales, SmoothQuant)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm


def calibration_inputs(sm, texts: list[str], seq_len: int, max_seqs: int = 128) -> list[dict]:
    """Token batches: LMs get the texts joined and cut into seq_len-token chunks; other models
    get batches of 8 texts truncated to seq_len."""
    if not texts:
        raise ValueError("calibration needs data (texts); none was given")
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
            enc["decoder_input_ids"] = enc["input_ids"]
        out.append(enc)
    return out


def calibration_forward(sm, enc: dict):
    """One forward pass of a calibration batch (no KV cache for models that have one)."""
    return sm.model(**enc, **({"use_cache": False} if sm.kind != "embedding" else {}))


def model_output(sm, enc: dict) -> torch.Tensor:
    """The model's logits (or last hidden state) on one batch, float32, for before/after checks."""
    o = calibration_forward(sm, enc)
    t = o.logits if getattr(o, "logits", None) is not None else o.last_hidden_state
    return t.detach().float()


@torch.inference_mode()
def observe_inputs(sm, targets: list[tuple[str, nn.Module]], batches: list[dict],
                   consume: Callable[[str, torch.Tensor], None], desc: str = "calibration",
                   consume_raw: Callable | None = None) -> None:
    """Run the model over `batches`; for each target, call consume(name, input (..., in)) (or
    consume_raw(name, input as float, the input tensor itself) to see which layers share it).
    Padding positions are included (they are real inputs of the layer at run time too)."""
    from .rotation import input_of

    def hook(m, args, out, n):
        x = input_of(m, args[0].detach())
        if consume_raw is not None:
            consume_raw(n, x.float(), args[0])  # args[0]: the same object for layers sharing an input
        else:
            consume(n, x.float())

    hooks = [mod.register_forward_hook(lambda m, args, out, n=name: hook(m, args, out, n)) for name, mod in targets]
    try:
        for enc in tqdm(batches, desc=desc, leave=False, disable=not desc):
            calibration_forward(sm, enc)
    finally:
        for h in hooks:
            h.remove()
