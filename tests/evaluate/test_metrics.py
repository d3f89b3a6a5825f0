import math

import numpy as np
import pytest
import torch

from slimformer.evaluate.metrics import (
    METRICS, accuracy, bleu, chrf, f1, pearson, perplexity_from_nll, rouge, spearman)


def test_correlations():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(100)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-100)
    # ranks differ by 0,1,1,0: rho = 1 - 6*2 / (4*(16-1)) = 0.8
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(80)
    assert spearman(np.array([0.1, 0.5, 0.9]), torch.tensor([1.0, 2.0, 5.0])) == pytest.approx(100)
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(100)
    assert pearson([1, 2, 3], [1, 3, 2]) == pytest.approx(50)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))  # constant predictions: undefined


def test_accuracy_and_f1():
    assert accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == pytest.approx(50)
    assert accuracy(torch.tensor([2, 2]), [2, 2]) == 100
    # tp=2, fp=1, fn=1: F1 = 2*2 / (2*2 + 1 + 1)
    assert f1([1, 1, 0, 1, 0], [1, 0, 0, 1, 1]) == pytest.approx(200 / 3)
    assert f1([0, 0], [0, 0]) == 0.0  # no positives anywhere
    # per class: 0 -> 1.0, 1 -> 0.0, 2 -> 2/(2+1+1) = 0.5; mean 0.5
    assert f1([0, 1, 2, 2], [0, 2, 2, 1], average="macro") == pytest.approx(50)
    with pytest.raises(ValueError, match="needs labels 0/1, got also \\[2\\]; use average='macro'"):
        f1([0, 1, 2], [0, 1, 1])
    with pytest.raises(ValueError, match="unknown average 'micro'"):
        f1([0], [0], average="micro")


def test_bleu_and_chrf():
    refs = ["the cat sat on the mat", "a dog barked loudly at night"]
    assert bleu(refs, refs) == pytest.approx(100)
    assert chrf(refs, refs) == pytest.approx(100)
    assert bleu(["xyz qqq"], ["the cat sat on the mat"]) == pytest.approx(0)
    assert 0 < bleu(["the cat sat on a mat"], ["the cat sat on the mat"]) < 100
    # several references per hypothesis: one of them matches exactly
    assert bleu(["the cat sat on the mat"], [["a dog ran", "the cat sat on the mat"]]) == pytest.approx(100)
    with pytest.raises(ValueError, match="equal-length list"):
        bleu(["a", "b"], [["a", "x"], ["b"]])


def test_rouge_hand_computed():
    # tokens: the cat sat on the mat / the cat was on the mat
    # rouge1: overlap 5 of 6 and 6 -> 5/6; rouge2: 3 of 5 bigrams -> 3/5; LCS "the cat on the mat" -> 5/6
    r = rouge(["The cat sat on the mat."], ["the cat was on the mat"])
    assert r == pytest.approx({"rouge1": 500 / 6, "rouge2": 60.0, "rougeL": 500 / 6})
    # order matters only for rouge2/L; averaging is over examples
    assert rouge(["a b c d"], ["d c b a"]) == pytest.approx({"rouge1": 100, "rouge2": 0, "rougeL": 25})
    both = rouge(["The cat sat on the mat.", "Hello, World!"], ["the cat was on the mat", "hello world"])
    assert both == pytest.approx({"rouge1": (500 / 6 + 100) / 2, "rouge2": 80.0, "rougeL": (500 / 6 + 100) / 2})
    assert rouge(["", "x"], ["a", "x"])["rouge1"] == pytest.approx(50)
    # stemmed, as papers report: "runs" / "running" and "cats" / "cat" match
    assert rouge(["the dog runs after cats"], ["the dog running after a cat"])["rouge1"] == pytest.approx(
        100 * 2 * (5 / 5) * (5 / 6) / (5 / 5 + 5 / 6))


XSUM_STYLE = [  # (document summary written for the test, a model's summary)
    ("A fire broke out at a warehouse in the north of the city on Tuesday night, officials said.",
     "Firefighters are tackling a blaze at a warehouse in the north of the city."),
    ("The team won its third league title in four seasons after beating its rivals 2-1.",
     "The club has won the league title for the third time in four seasons."),
    ("Scientists have found that bees can learn to count up to four, a new study suggests.",
     "Bees are able to count to four, according to researchers."),
]


def test_rouge_equals_rouge_score_on_xsum_style_pairs():
    from rouge_score import rouge_scorer

    refs, hyps = [r for r, _ in XSUM_STYLE], [h for _, h in XSUM_STYLE]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    want = {k: 100 * sum(scorer.score(r, h)[k].fmeasure for r, h in zip(refs, hyps)) / 3
            for k in ("rouge1", "rouge2", "rougeL")}
    assert rouge(hyps, refs) == pytest.approx(want)
    assert 0 < want["rouge2"] < want["rouge1"] < 100


def test_perplexity():
    assert perplexity_from_nll(0.0, 5) == 1.0
    assert perplexity_from_nll(4 * math.log(10), 4) == pytest.approx(10)
    assert perplexity_from_nll(1e6, 1) == math.inf
    with pytest.raises(ValueError, match="n_tokens > 0"):
        perplexity_from_nll(1.0, 0)
    with pytest.raises(ValueError, match="finite total_nll"):
        perplexity_from_nll(float("nan"), 3)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_every_metric_validates_lengths(name):
    fn = METRICS[name]
    args = (["a b", "c d"], ["a b"]) if name in ("bleu", "chrf", "rouge") else ([1, 0], [1])
    with pytest.raises(ValueError, match=f"{name.split('_')[0]}: predictions and references differ in length \\(2 vs 1\\)"):
        fn(*args)
    with pytest.raises(ValueError, match="expected at least"):
        fn([], [])


def test_correlation_needs_two_points():
    with pytest.raises(ValueError, match="spearman: expected at least 2 item"):
        spearman([1.0], [2.0])
