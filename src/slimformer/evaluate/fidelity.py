"""Fidelity to a reference model on the same inputs: embedding cosine, logit KL, top-1 agreement."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.errors import SlimformerError
from ..data.calibration import decoder_inputs


@torch.inference_mode()
def fidelity(sm, ref, texts: list[str], batch_size: int = 16, max_length: int = 128) -> dict:
    """Compare `sm` to `ref` (both SlimModels of the same kind and tokenizer) on `texts`.

    embedding: mean cosine of pooled embeddings (and the minimum);
    classification / LMs: KL(ref || model) of the next-token / class distribution, averaged
    over real (unpadded) positions, and the fraction where the top-1 prediction agrees.
    """
    if sm.kind != ref.kind:
        raise SlimformerError(f"reference is a {ref.kind} model but the model is {sm.kind}; fidelity needs the same kind")
    if sm.kind == "embedding":
        a = sm.embed(texts, batch_size, max_length)
        b = ref.embed(texts, batch_size, max_length)
        cos = F.cosine_similarity(a, b)
        return {"cosine": cos.mean().item(), "cosine_min": cos.min().item(), "n": len(texts)}
    kl_sum, agree, n = 0.0, 0, 0
    for i in range(0, len(texts), batch_size):
        enc = sm.tokenize(texts[i : i + batch_size], max_length)
        if sm.kind == "seq2seq-lm":
            enc["decoder_input_ids"] = decoder_inputs(sm, enc["input_ids"])
        p = sm.model(**enc).logits.float()
        q = ref.model(**enc).logits.float()
        if p.dim() == 2:  # classification: (B, C)
            mask = torch.ones(p.shape[0], dtype=torch.bool)
        else:  # (B, T, V)
            mask = enc["attention_mask"].bool()
            p, q = p[mask], q[mask]
        kl_sum += kl_sum_of(q, p)
        agree += (p.argmax(-1) == q.argmax(-1)).sum().item()
        n += p.shape[0]
    return {"kl": kl_sum / max(n, 1), "agreement": agree / max(n, 1), "n": n}


def kl_sum_of(ref_logits: torch.Tensor, logits: torch.Tensor) -> float:
    """sum over rows of KL(softmax(ref) || softmax(logits)): rows are positions (..., V)."""
    lq, lp = F.log_softmax(ref_logits.float(), -1), F.log_softmax(logits.float(), -1)
    return (lq.exp() * (lq - lp)).sum().item()


@torch.inference_mode()
def fidelity_outputs(sm, batches: list[dict]) -> list[torch.Tensor]:
    """What fidelity compares, per calibration batch: pooled sentence embeddings for embedding
    models, logits otherwise (float32). Used by sensitivity searches (mixed precision, pruning)."""
    from ..models.activations import calibration_forward

    outs = []
    for enc in batches:
        o = calibration_forward(sm, enc)
        if sm.kind == "embedding":
            h = o.last_hidden_state.float()
            outs.append(sm.pooling(h, enc["attention_mask"]) if sm.pooling else h.mean(1))
        else:
            outs.append(o.logits.float())
    return outs


def fidelity_drop(ref: list[torch.Tensor], out: list[torch.Tensor], kind: str) -> float:
    """How far `out` is from `ref` (from fidelity_outputs): 1 - mean cosine for embeddings, else
    the mean KL(ref || out) per position. 0 = identical."""
    if kind == "embedding":
        return 1.0 - torch.cat([F.cosine_similarity(a, b) for a, b in zip(ref, out)]).mean().item()
    kl, n = 0.0, 0
    for a, b in zip(ref, out):
        kl += kl_sum_of(a, b)
        n += a.numel() // a.shape[-1]
    return kl / max(n, 1)
