"""Batched beam search (greedy = one beam) for the reference Transformer, with cached keys and values.

Each step feeds only the newest token of every hypothesis; the decoder's self-attention keys and
values of earlier steps, and the cross-attention keys and values of the encoder output, live in a
per-layer cache that is reordered when hypotheses are re-ranked. A hypothesis ends at EOS; its
score is the sum of token log-probabilities divided by length ** length_penalty (fairseq's rule:
1.0 = average per token, 0 = raw sum). A sentence stops when it has num_beams finished
hypotheses (or at the length limit, where the live ones are finished as they are).
"""
from __future__ import annotations

import torch


def _reorder(cache: list, index: torch.Tensor) -> None:
    for layer in cache:
        for part in layer.values():
            for k in list(part):
                part[k] = part[k].index_select(0, index)


@torch.no_grad()
def beam_search(model, input_ids, attention_mask, max_len: int, num_beams: int = 1,
                length_penalty: float = 1.0) -> torch.Tensor:
    cfg = model.config
    B, K = input_ids.shape[0], num_beams
    memory = model.model.encoder(input_ids, attention_mask)                       # (B, S, D)
    memory = memory.repeat_interleave(K, 0)                                       # (B*K, S, D)
    mmask = attention_mask.repeat_interleave(K, 0)
    cache = [{} for _ in model.model.decoder.layers]
    tokens = torch.full((B * K, 1), cfg.decoder_start_token_id, dtype=torch.long, device=input_ids.device)
    scores = torch.zeros(B, K, device=input_ids.device)
    scores[:, 1:] = float("-inf")                                                 # step 0: one live beam
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    done = [False] * B
    for step in range(max_len):
        lp = model.decode_step(tokens[:, -1:], memory, mmask, cache, start=step)  # (B*K, V)
        V = lp.shape[-1]
        cand = (scores.reshape(B * K, 1) + lp).view(B, K * V)
        top_s, top_i = cand.topk(min(2 * K, K * V), dim=1)                        # (B, 2K)
        new_scores = torch.full((B, K), float("-inf"), device=lp.device)
        new_src = torch.arange(B, device=lp.device).repeat_interleave(K).view(B, K) * K
        new_tok = torch.full((B, K), cfg.pad_token_id, dtype=torch.long, device=lp.device)
        ts, ti = top_s.tolist(), top_i.tolist()
        for b in range(B):
            if done[b]:
                continue
            n = 0
            for j, (s, i) in enumerate(zip(ts[b], ti[b])):
                k, t = divmod(i, V)
                if t == cfg.eos_token_id:
                    if j < K:  # an EOS ranked among the best K ends that hypothesis
                        seq = tokens[b * K + k, 1:].tolist()
                        finished[b].append((s / (len(seq) + 1) ** length_penalty, seq))
                    continue
                new_scores[b, n], new_src[b, n], new_tok[b, n] = s, b * K + k, t
                n += 1
                if n == K:
                    break
            done[b] = len(finished[b]) >= K
        if all(done):
            break
        index = new_src.view(-1)
        _reorder(cache, index)
        tokens = torch.cat([tokens.index_select(0, index), new_tok.view(-1, 1)], 1)
        scores = new_scores
    for b in range(B):  # length limit: the live hypotheses end where they are
        if not done[b]:
            for k in range(K):
                s = scores[b, k].item()
                if s > float("-inf"):
                    seq = tokens[b * K + k, 1:].tolist()
                    finished[b].append((s / max(len(seq), 1) ** length_penalty, seq))
    best = [max(f, key=lambda x: x[0])[1] if f else [] for f in finished]
    width = max(len(s) for s in best) + 2
    out = torch.full((B, width), cfg.pad_token_id, dtype=torch.long, device=input_ids.device)
    for b, seq in enumerate(best):
        row = [cfg.decoder_start_token_id] + seq + [cfg.eos_token_id]
        out[b, :len(row)] = torch.tensor(row, device=input_ids.device)
    return out
