import re
from collections import Counter

import pytest
import torch

from slimformer.core.errors import DataError
from slimformer.data import Task, calibration_batches, calibration_texts, sample_sentences

TEXTS = [f"sentence number {i}" for i in range(20)]


def test_sampling_is_deterministic_and_without_replacement():
    a = calibration_texts(TEXTS, n=10, seed=3)
    assert a == calibration_texts(TEXTS, n=10, seed=3)
    assert a != calibration_texts(TEXTS, n=10, seed=4)
    assert len(a) == 10 and len(set(a)) == 10 and set(a) <= set(TEXTS)


def test_more_than_available_uses_every_text_evenly():
    out = calibration_texts(TEXTS[:3], n=8, seed=0)
    assert len(out) == 8
    assert set(out[:3]) == set(TEXTS[:3]) and set(out[3:6]) == set(TEXTS[:3])
    assert sorted(Counter(out).values()) == [2, 3, 3]


def test_sources_task_and_file(tmp_path):
    task = Task("stsb", [("a b", "c d", 1.0), ("e f", "g h", 2.0)])
    assert sorted(calibration_texts(task, n=4)) == ["a b", "c d", "e f", "g h"]
    p = tmp_path / "calib.txt"
    p.write_text("first text\n\n  second text  \r\nthird text\n", encoding="utf-8")
    assert sorted(calibration_texts(p, n=3)) == ["first text", "second text", "third text"]
    assert sorted(calibration_texts(str(p), n=3)) == ["first text", "second text", "third text"]


def test_bad_sources(tmp_path):
    with pytest.raises(DataError, match="texts: expected at least one non-empty text"):
        calibration_texts(["", "  "])
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'none.txt'}: file not found")):
        calibration_texts(tmp_path / "none.txt")
    with pytest.raises(DataError, match="texts item 1: expected a string, got int"):
        calibration_texts(["ok", 3])
    with pytest.raises(ValueError, match="n: expected an integer >= 1"):
        calibration_texts(TEXTS, n=0)


class WordTokenizer:
    """Minimal stand-in for an HF tokenizer: whitespace words -> ids, with [CLS]=1 prefix."""

    pad_token_id = None
    eos_token_id = 9
    padding_side = "right"

    def __call__(self, texts, truncation, max_length):
        ids = [([1] + [10 + len(w) for w in t.split()])[:max_length] for t in texts]
        return {"input_ids": ids, "token_type_ids": [[0] * len(r) for r in ids],
                "offsets": [(0, 1)] * len(ids)}


def test_batches_pad_truncate_and_mask():
    texts = ["a bb ccc", "dddd", "e f g h i j k", "z"]
    batches = calibration_batches(texts, WordTokenizer(), batch_size=3, max_length=5)
    assert [b["input_ids"].shape for b in batches] == [(3, 5), (1, 2)]
    b = batches[0]
    assert set(b) == {"input_ids", "attention_mask", "token_type_ids"}
    assert b["input_ids"].dtype == torch.long
    assert b["input_ids"][1].tolist() == [1, 14, 9, 9, 9]  # padded with EOS (no pad token)
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert b["input_ids"][2].tolist() == [1, 11, 11, 11, 11]  # truncated to max_length


def test_left_padding_and_pad_id():
    tok = WordTokenizer()
    tok.padding_side, tok.pad_token_id = "left", 0
    (b,) = calibration_batches(["a bb", "c"], tok, batch_size=8)
    assert b["input_ids"].tolist() == [[1, 11, 12], [0, 1, 11]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]


def test_batches_with_a_real_fast_tokenizer_without_pad_token():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<eos>": 0, "<unk>": 1, "the": 2, "cat": 3, "sat": 4}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", unk_token="<unk>")
    assert tok.pad_token is None
    (b,) = calibration_batches(["the cat sat", "cat"], tok, max_length=8)
    assert b["input_ids"].tolist() == [[2, 3, 4], [3, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert tok.pad_token is None  # not modified


def test_batches_bad_args():
    with pytest.raises(ValueError, match="batch_size"):
        calibration_batches(["a"], WordTokenizer(), batch_size=0)
    with pytest.raises(DataError, match="got a single str"):
        calibration_batches("a b", WordTokenizer())
    with pytest.raises(DataError, match="expected at least one text"):
        calibration_batches([], WordTokenizer())


def test_sample_sentences_are_diverse():
    s = sample_sentences()
    assert 250 <= len(s) <= 400
    assert len(set(s)) == len(s) and all(x == x.strip() and x for x in s)
    assert sum(x.endswith("?") for x in s) >= 20
    lengths = [len(x.split()) for x in s]
    assert min(lengths) <= 2 and max(lengths) >= 30
    s.clear()
    assert sample_sentences()  # callers get a copy
