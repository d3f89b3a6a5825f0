import json
import re
import sys
import types

import pytest

from slimformer.core.errors import DataError, SlimformerError
from slimformer.data import TASK_KINDS, Task, load_task


def write(path, text, newline="\n"):
    path.write_bytes(text.replace("\n", newline).encode("utf-8"))
    return path


def raises(msg):
    """DataError whose message contains `msg` verbatim."""
    return pytest.raises(DataError, match=re.escape(msg))


# ----------------------------------------------------------------------------- stsb
def test_stsb_csv_without_header_with_quotes(tmp_path):
    p = write(tmp_path / "s.csv", 'A man sings.,A man is singing.,4.5\n"Yes, sure.",No.,0\n')
    t = load_task("stsb", p)
    assert t.kind == "stsb" and len(t) == 2 and t.source == str(p)
    assert t.examples == [("A man sings.", "A man is singing.", 4.5), ("Yes, sure.", "No.", 0.0)]
    assert t.meta == {"format": "csv", "header": False}
    assert t.texts() == ["A man sings.", "A man is singing.", "Yes, sure.", "No."]


def test_stsb_header_is_skipped(tmp_path):
    p = write(tmp_path / "s.csv", "s1,s2,score\na,b,1.25\n")
    t = load_task("stsb", p)
    assert t.examples == [("a", "b", 1.25)] and t.meta["header"] is True


def test_stsb_wrong_field_count_names_file_and_line(tmp_path):
    p = write(tmp_path / "s.csv", "a,b,1\n\nc,d\n")
    with raises(f"{p} line 3: expected `s1,s2,score` with a numeric score, got 2 fields"):
        load_task("stsb", p)


def test_stsb_non_numeric_score(tmp_path):
    p = write(tmp_path / "s.csv", "a,b,1\nc,d,high\n")
    with raises(f"{p} line 2: expected `s1,s2,score` with a numeric score, got score 'high'"):
        load_task("stsb", p)


def test_stsb_line_numbers_after_multiline_quoted_field(tmp_path):
    p = write(tmp_path / "s.csv", 'a,"two\nlines",1\nc,d,x\n')
    with raises(f"{p} line 3: expected"):
        load_task("stsb", p)


def test_stsb_jsonl_and_tsv(tmp_path):
    j = write(tmp_path / "s.jsonl", json.dumps({"sentence1": "a", "sentence2": "b", "score": 3}) + "\n")
    assert load_task("stsb", j).examples == [("a", "b", 3.0)]
    t = write(tmp_path / "s.tsv", "a\tb\t2.5\n")
    assert load_task("stsb", t).examples == [("a", "b", 2.5)]


def test_stsb_directory_picks_default_file(tmp_path):
    write(tmp_path / "stsb-en-dev.csv", "a,b,1\n")
    write(tmp_path / "stsb-en-test.csv", "c,d,2\n")
    assert load_task("stsb", tmp_path).examples == [("a", "b", 1.0)]
    assert load_task("stsb", tmp_path, split="test").examples == [("c", "d", 2.0)]
    with raises(f"{tmp_path}: expected one data file for split 'train'"):
        load_task("stsb", tmp_path, split="train")


def test_directory_with_single_csv(tmp_path):
    write(tmp_path / "pairs.csv", "a,b,1\n")
    assert load_task("stsb", tmp_path).examples == [("a", "b", 1.0)]


# ----------------------------------------------------------------------------- classification
def test_classification_tsv_header_crlf_and_blank_lines(tmp_path):
    p = write(tmp_path / "dev.tsv", "text\tlabel\ngood film \t1\n\nbad film\t0\n", newline="\r\n")
    t = load_task("classification", p)
    assert t.examples == [("good film", 1), ("bad film", 0)]
    assert t.meta == {"format": "tsv", "header": True}
    assert t.texts() == ["good film", "bad film"]


def test_classification_tsv_three_fields(tmp_path):
    p = write(tmp_path / "x.tsv", "text\tlabel\na\t1\nb\tc\t1\n")
    with raises(f"{p} line 3: expected `text<TAB>label` with an integer label, got 3 fields"):
        load_task("classification", p)


def test_classification_bad_label_after_first_row(tmp_path):
    p = write(tmp_path / "x.tsv", "a\t1\nb\tpositive\n")
    with raises(f"{p} line 2: expected `text<TAB>label` with an integer label, got label 'positive'"):
        load_task("classification", p)


def test_classification_csv_and_directory(tmp_path):
    write(tmp_path / "dev.csv", 'text,label\n"Great, really.",1\n')
    write(tmp_path / "train.csv", "x,0\n")
    t = load_task("classification", tmp_path)
    assert t.examples == [("Great, really.", 1)] and t.meta["format"] == "csv"


def test_classification_jsonl(tmp_path):
    rows = [{"text": "fine", "label": 1}, {"sentence": "awful", "label": 0}]
    p = write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    assert load_task("classification", p).examples == [("fine", 1), ("awful", 0)]


def test_classification_jsonl_errors(tmp_path):
    p = write(tmp_path / "d.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": \n')
    with raises(f"{p} line 2: expected a JSON object, got invalid JSON"):
        load_task("classification", p)
    write(p, '{"text": "a", "label": 1}\n\n{"body": "b"}\n')
    with raises(f"{p} line 3: expected keys text/label or sentence/label, got keys ['body']"):
        load_task("classification", p)
    write(p, '{"text": "a", "label": "pos"}\n')
    with raises(f"{p} line 1: expected an integer label, got 'pos'"):
        load_task("classification", p)
    write(p, '[1, 2]\n')
    with raises(f"{p} line 1: expected a JSON object, got list"):
        load_task("classification", p)


def test_empty_and_header_only_files(tmp_path):
    p = write(tmp_path / "e.tsv", "")
    with raises(f"{p}: expected at least one example, found none"):
        load_task("classification", p)
    write(p, "text\tlabel\n\n")
    with raises(f"{p}: expected at least one example, found none"):
        load_task("classification", p)


def test_missing_file_names_the_path(tmp_path):
    p = tmp_path / "nope.tsv"
    with raises(f"{p}: file not found"):
        load_task("classification", p)


def test_invalid_utf8_names_the_line(tmp_path):
    p = tmp_path / "x.tsv"
    p.write_bytes(b"a\t1\nb\xff\t0\n")
    with raises(f"{p} line 2: expected UTF-8 text, got byte 0xff"):
        load_task("classification", p)


# ----------------------------------------------------------------------------- lm
def test_lm_crlf_head_texts_and_limit(tmp_path):
    p = write(tmp_path / "w.raw", " = Title = \n\n First line .\n Second line .\n", newline="\r\n")
    t = load_task("lm", p)
    assert t.examples == [" = Title = \n\n First line .\n Second line ."] and len(t) == 1
    assert t.texts() == ["= Title =", "First line .", "Second line ."]
    assert t.head(3).examples == [" = Title = \n\n First line ."]
    assert load_task("lm", p, limit=1).examples == [" = Title = "]


def test_lm_empty_file(tmp_path):
    p = write(tmp_path / "w.txt", "\n  \n")
    with raises(f"{p}: expected non-empty text, got an empty file"):
        load_task("lm", p)


def test_lm_without_path_uses_packaged_sentences():
    t = load_task("lm")
    assert t.source == "slimformer:samples/sentences.txt" and len(t.texts()) >= 250


# ----------------------------------------------------------------------------- translation
def test_translation_prefix_pair_and_comma_form(tmp_path):
    write(tmp_path / "t.en", "A dog runs.\nTwo cats.\n")
    write(tmp_path / "t.de", "Ein Hund rennt.\nZwei Katzen.\n")
    t = load_task("translation", str(tmp_path / "t"))
    assert t.examples == [("A dog runs.", "Ein Hund rennt."), ("Two cats.", "Zwei Katzen.")]
    assert t.meta["pair"] == ("en", "de") and t.texts() == ["A dog runs.", "Two cats."]
    rev = load_task("translation", f"{tmp_path / 't.de'},{tmp_path / 't.en'}")
    assert rev.examples[0] == ("Ein Hund rennt.", "A dog runs.")
    assert load_task("translation", tmp_path / "t", pair=("de", "en")).examples == rev.examples
    assert load_task("translation", tmp_path, split="t", limit=1).examples == t.examples[:1]


def test_translation_unequal_line_counts(tmp_path):
    write(tmp_path / "t.en", "a\nb\nc\n")
    write(tmp_path / "t.de", "x\ny\n")
    with raises(f"{tmp_path / 't.en'} has 3 lines, {tmp_path / 't.de'} has 2 lines"):
        load_task("translation", tmp_path / "t")


def test_translation_errors(tmp_path):
    with raises(f"{tmp_path / 'missing.en'}: file not found"):
        load_task("translation", tmp_path / "missing")
    with raises(f"{tmp_path}: is a directory; pass split=PREFIX"):
        load_task("translation", tmp_path)
    with raises("pair: expected two language codes"):
        load_task("translation", tmp_path / "t", pair=("en",))


# ----------------------------------------------------------------------------- summarization
def test_summarization_jsonl_both_key_styles(tmp_path):
    p = write(tmp_path / "s.jsonl", json.dumps({"document": "Long text.", "summary": "Short."}) + "\n"
              + json.dumps({"article": "Story.", "highlights": "Gist."}) + "\n")
    t = load_task("summarization", p)
    assert t.examples == [("Long text.", "Short."), ("Story.", "Gist.")]
    assert t.texts() == ["Long text.", "Story."]


def test_summarization_bad_line(tmp_path):
    p = write(tmp_path / "s.jsonl", json.dumps({"document": "d", "summary": "s"}) + "\nnot json\n")
    with raises(f"{p} line 2: expected a JSON object, got invalid JSON"):
        load_task("summarization", p)
    write(p, json.dumps({"document": "d", "summary": 3}) + "\n")
    with raises(f"{p} line 1: expected the summary to be a string, got int"):
        load_task("summarization", p)


# ----------------------------------------------------------------------------- api checks
def test_unknown_kind_lists_accepted():
    with raises("unknown task kind 'qa'; accepted: " + ", ".join(TASK_KINDS)):
        load_task("qa", "x.tsv")
    with pytest.raises(DataError):
        Task("qa", [])


def test_bad_options_and_path(tmp_path):
    p = write(tmp_path / "x.tsv", "a\t1\n")
    with raises("unknown option(s) sep for a local classification task; accepted: none"):
        load_task("classification", p, sep=",")
    with raises("load_task('stsb') needs a path"):
        load_task("stsb")
    with raises("limit: expected an integer >= 0"):
        load_task("classification", p, limit=-1)
    assert issubclass(DataError, SlimformerError)


def test_head_keeps_meta_independent(tmp_path):
    t = Task("classification", [("a", 0), ("b", 1), ("c", 0)], "mem", {"format": "x"})
    h = t.head(2)
    assert h.examples == [("a", 0), ("b", 1)] and len(t) == 3
    h.meta["format"] = "y"
    assert t.meta["format"] == "x"
    with pytest.raises(ValueError):
        t.head(-1)


# ----------------------------------------------------------------------------- HF datasets
@pytest.fixture
def fake_datasets(monkeypatch):
    calls = []
    tables = {}

    def load_dataset(*args, split=None, **kw):
        calls.append((args, split, kw))
        if args[0] == "broken":
            raise FileNotFoundError("no such dataset")
        return tables[args[0]]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return tables, calls


def test_hf_column_mapping_for_every_kind(fake_datasets):
    tables, calls = fake_datasets
    tables["glue"] = [{"sentence": "nice", "label": 1, "idx": 0}, {"sentence": "meh", "label": 0, "idx": 1}]
    t = load_task("classification", "hf:glue:sst2")
    assert t.examples == [("nice", 1), ("meh", 0)] and t.source == "hf:glue:sst2"
    assert calls[-1] == (("glue", "sst2"), "validation", {})
    assert t.meta == {"format": "hf", "name": "glue", "config": "sst2", "split": "validation"}

    tables["sts"] = [{"sentence1": "a", "sentence2": "b", "label": 4.2}]
    assert load_task("stsb", "hf:sts", split="test").examples == [("a", "b", 4.2)]
    assert calls[-1] == (("sts",), "test", {})

    tables["wiki"] = [{"text": ""}, {"text": " = T = \n"}, {"text": ""}, {"text": " Body .\n"}]
    lm = load_task("lm", "hf:wiki:raw")
    assert lm.examples == ["\n = T = \n\n Body ."] and lm.texts() == ["= T =", "Body ."]

    tables["mt"] = [{"translation": {"en": "dog", "de": "Hund"}}, {"translation": {"en": "cat", "de": "Katze"}}]
    tr = load_task("translation", "hf:mt", pair=("de", "en"), limit=1, revision="main")
    assert tr.examples == [("Hund", "dog")] and calls[-1][2] == {"revision": "main"}
    tables["mt2"] = [{"en": "dog", "de": "Hund"}]
    assert load_task("translation", "hf:mt2").examples == [("dog", "Hund")]

    tables["cnn"] = [{"article": "Long.", "highlights": "Short.", "id": "x"}]
    assert load_task("summarization", "hf:cnn:3.0.0").examples == [("Long.", "Short.")]


def test_hf_errors(fake_datasets):
    tables, _ = fake_datasets
    tables["glue"] = [{"sentence": "ok", "label": 1}, {"premise": "p", "label": 0}]
    with raises("hf:glue split validation row 1: expected keys text/label or sentence/label, "
                "got keys ['label', 'premise']"):
        load_task("classification", "hf:glue")
    with raises("hf:broken: could not load split 'validation': no such dataset"):
        load_task("classification", "hf:broken")
    tables["empty"] = []
    with raises("hf:empty split test: expected at least one example, found none"):
        load_task("summarization", "hf:empty")
    tables["mt"] = [{"translation": {"en": "dog", "fr": "chien"}}]
    with raises("expected a `translation` dict or columns en/de"):
        load_task("translation", "hf:mt")


def test_hf_without_datasets_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with raises("pip install slimformer[datasets]"):
        load_task("classification", "hf:glue:sst2")


# ----------------------------------------------------------------------------- real data
@pytest.mark.slow
def test_real_stsb_dev(shared_data):
    t = load_task("stsb", shared_data / "stsb")
    assert len(t) == 1500 and t.source.endswith("stsb-en-dev.csv")
    assert all(0.0 <= s <= 5.0 for _, _, s in t.examples)


@pytest.mark.slow
def test_real_sst2_dev(shared_data):
    t = load_task("classification", shared_data / "sst2" / "dev.tsv")
    assert len(t) == 872 and t.meta["header"] is True
    assert {label for _, label in t.examples} == {0, 1}


@pytest.mark.slow
def test_real_multi30k_test(shared_data):
    t = load_task("translation", shared_data / "multi30k" / "test_2016_flickr")
    assert len(t) == 1000 and all(s and g for s, g in t.examples)


@pytest.mark.slow
def test_real_wikitext_raw(shared_data):
    t = load_task("lm", shared_data / "wikitext2raw" / "wiki.test.raw")
    assert "\r" not in t.examples[0] and len(t.texts()) == 2891
