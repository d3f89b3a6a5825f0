"""Fidelity to a reference model on the same inputs: embedding cosine, logit KL, top-1 agreement."""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.inference_mode()
def fidelity(sm, ref, texts: list[str], batch_size: int = 16, max_length: int = 128) -> dict:
    """Compare `sm` to `ref` (both SlimModels of the same kind and tokenizer) on `texts`.

    embedding: mean cosine of pooled embeddings (and the minimum);
    classification / LMs: KL(ref || model) of the next-token / class distribution, averaged
    over real (unpadded) positions, and the fraction where the top-1 prediction agrees.
    """
    if sm.kind != ref.kind:
        raise ValueError(f"reference is a {ref.kind} model but the model is {sm.kind}; fidelity needs the same kind")
    if sm.kind == "embedding":
        a = sm.embed(texts, batch_size, max_length)
        b = ref.embed(texts, batch_size, max_length)
        cos = F.cosine_similarity(a, b)
        return {"cosine": cos.mean().item(), "cosine_min": cos.min().item(), "n": len(texts)}
    kl_sum, agree, n = 0.0, 0, 0
    for i in range(0, len(texts), batch_size):
        enc = sm.tokenize(texts[i : i + batch_size], max_length)
        if sm.kind == "seq2seq-lm":
            enc["decoder_input_ids"] = _shift_right(sm, enc["input_ids"])
        p = sm.model(**enc).logits.float()
        q = ref.model(**enc).logits.float()
        if p.dim() == 2:  # classification: (B, C)
            mask = torch.ones(p.shape[0], dtype=torch.bool)
        else:  # (B, T, V)
            mask = enc["attention_mask"].bool()
            p, q = p[mask], q[mask]
        lq, lp = F.log_softmax(q, -1), F.log_softmax(p, -1)
        kl_sum += (lq.exp() * (lq - lp)).sum().item()
        agree += (p.argmax(-1) == q.argmax(-1)).sum().item()
        n += p.shape[0]
    return {"kl": kl_sum / max(n, 1), "agreement": agree / max(n, 1), "n": n}


def _shift_right(sm, ids: torch.Tensor) -> torch.Tensor:
    start = sm.model.config.decoder_start_token_id or 0
    return torch.cat([torch.full_like(ids[:, :1], start), ids[:, :-1]], dim=1)
