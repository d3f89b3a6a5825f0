"""Task metrics as pure functions of predictions and references (no model).

Scores are on a 0-100 scale (correlations -100..100), as papers report them. Mismatched lengths
or empty input raise ValueError.
"""
from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from functools import partial

import numpy as np
import sacrebleu
from scipy import stats

from ..core.errors import DataError


def _pair(pred, gold, name: str, min_len: int = 1) -> tuple[list, list]:
    pred = np.asarray(pred).tolist() if not isinstance(pred, (list, tuple)) else list(pred)
    gold = np.asarray(gold).tolist() if not isinstance(gold, (list, tuple)) else list(gold)
    if len(pred) != len(gold):
        raise DataError(f"{name}: predictions and references differ in length "
                         f"({len(pred)} vs {len(gold)}); expected one prediction per reference")
    if len(pred) < min_len:
        raise DataError(f"{name}: expected at least {min_len} item(s), got {len(pred)}")
    return pred, gold


def _correlation(fn, pred, gold, name: str) -> float:
    pred, gold = _pair(pred, gold, name, min_len=2)
    with warnings.catch_warnings():  # constant input: undefined, reported as nan
        warnings.simplefilter("ignore")
        r = fn(np.asarray(pred, dtype=float), np.asarray(gold, dtype=float))[0]
    return float(r) * 100


def spearman(pred, gold) -> float:
    """Spearman rank correlation x100 (nan when either side is constant)."""
    return _correlation(stats.spearmanr, pred, gold, "spearman")


def pearson(pred, gold) -> float:
    """Pearson correlation x100 (nan when either side is constant)."""
    return _correlation(stats.pearsonr, pred, gold, "pearson")


def accuracy(pred, gold) -> float:
    pred, gold = _pair(pred, gold, "accuracy")
    return 100.0 * sum(p == g for p, g in zip(pred, gold)) / len(gold)


def f1(pred, gold, average: str = "binary") -> float:
    """F1 x100. binary: of label 1 (labels must be 0/1); macro: mean over every label seen in
    pred or gold."""
    pred, gold = _pair(pred, gold, "f1")
    if average == "binary":
        extra = (set(pred) | set(gold)) - {0, 1}
        if extra:
            raise DataError(f"f1: average='binary' needs labels 0/1, got also {sorted(extra, key=repr)};"
                             " use average='macro'")
        labels = [1]
    elif average == "macro":
        labels = sorted(set(pred) | set(gold), key=repr)
    else:
        raise DataError(f"f1: unknown average {average!r}; accepted: binary, macro")
    scores = []
    for c in labels:
        tp = sum(p == c and g == c for p, g in zip(pred, gold))
        fp = sum(p == c and g != c for p, g in zip(pred, gold))
        fn = sum(p != c and g == c for p, g in zip(pred, gold))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return 100.0 * sum(scores) / len(scores)


def _refs(hyps, refs, name: str) -> tuple[list[str], list[list[str]]]:
    """sacrebleu wants reference *streams*: one list per reference set. `refs` holds one str per
    hypothesis, or a list of strs (several references) per hypothesis."""
    hyps, refs = _pair(hyps, refs, name)
    if all(isinstance(r, str) for r in refs):
        return hyps, [refs]
    counts = {len(r) for r in refs if isinstance(r, (list, tuple))}
    if len(counts) != 1 or not all(isinstance(r, (list, tuple)) for r in refs):
        raise DataError(f"{name}: expected one str or an equal-length list of strs per hypothesis")
    return hyps, [list(s) for s in zip(*refs)]


def bleu(hyps, refs) -> float:
    """sacrebleu corpus BLEU (13a tokenisation), 0-100."""
    hyps, streams = _refs(hyps, refs, "bleu")
    return float(sacrebleu.corpus_bleu(hyps, streams).score)


def bleu_with_signature(hyps, refs, lowercase: bool = False) -> tuple[float, str]:
    """sacrebleu corpus BLEU and its signature (how it was computed: tokenizer, case, version)."""
    from sacrebleu.metrics import BLEU

    hyps, streams = _refs(hyps, refs, "bleu")
    m = BLEU(lowercase=lowercase)
    return float(m.corpus_score(hyps, streams).score), str(m.get_signature())


def chrf_with_signature(hyps, refs) -> tuple[float, str]:
    from sacrebleu.metrics import CHRF

    hyps, streams = _refs(hyps, refs, "chrf")
    m = CHRF()
    return float(m.corpus_score(hyps, streams).score), str(m.get_signature())


def chrf(hyps, refs) -> float:
    """sacrebleu corpus chrF, 0-100."""
    hyps, streams = _refs(hyps, refs, "chrf")
    return float(sacrebleu.corpus_chrf(hyps, streams).score)


def _tokens(text: str) -> list[str]:
    return re.findall(r"[^\W_]+", text.lower())


def _f(overlap: int, n_hyp: int, n_ref: int) -> float:
    if not overlap:
        return 0.0
    p, r = overlap / n_hyp, overlap / n_ref
    return 2 * p * r / (p + r)


def _ngram_f(h: list[str], r: list[str], n: int) -> float:
    hc = Counter(zip(*(h[i:] for i in range(n))))
    rc = Counter(zip(*(r[i:] for i in range(n))))
    return _f(sum((hc & rc).values()), sum(hc.values()), sum(rc.values()))


def _lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge(hyps, refs) -> dict[str, float]:
    """ROUGE-1/2/L F-measure x100, averaged over examples, computed by Google's `rouge-score`
    package (what summarization papers report) with its Porter stemmer and tokenizer (lower-case,
    non-alphanumerics split off); ROUGE-L over the whole token sequences."""
    from rouge_score import rouge_scorer

    hyps, refs = _pair(hyps, refs, "rouge")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for hyp, ref in zip(hyps, refs):
        scores = scorer.score(ref, hyp)  # (target, prediction)
        for k in totals:
            totals[k] += scores[k].fmeasure
    return {k: 100.0 * v / len(hyps) for k, v in totals.items()}


def perplexity_from_nll(total_nll: float, n_tokens: int) -> float:
    """exp(total negative log-likelihood in nats / number of predicted tokens)."""
    if n_tokens <= 0:
        raise DataError(f"perplexity: expected n_tokens > 0, got {n_tokens}")
    if not math.isfinite(total_nll) or total_nll < 0:
        raise DataError(f"perplexity: expected a finite total_nll >= 0 (nats), got {total_nll}")
    try:
        return math.exp(total_nll / n_tokens)
    except OverflowError:
        return math.inf


# Metrics of (predictions, references). Perplexity takes (total_nll, n_tokens) and is not here.
METRICS = {
    "spearman": spearman,
    "pearson": pearson,
    "accuracy": accuracy,
    "f1": f1,
    "f1_macro": partial(f1, average="macro"),
    "bleu": bleu,
    "chrf": chrf,
    "rouge": rouge,
}
