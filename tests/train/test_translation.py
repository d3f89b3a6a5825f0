"""Training the reference Transformer: BPE vocabulary, token batches, inverse-sqrt schedule,
checkpoint averaging, and the train / translate CLI on a tiny copy task."""
import math

import pytest
import torch

import slimformer as sf
from slimformer.cli import main
from slimformer.core.errors import ConfigError
from slimformer.train import TrainConfig
from slimformer.train.trainer import lr_lambda
from slimformer.train.translation import TranslationConfig, token_batches, train_bpe, train_translation

SENTS = [s for s in sf.sample_sentences() if len(s.split()) <= 12][:96]
TINY = TranslationConfig(vocab_size=300, d_model=32, layers=1, heads=2, ffn=64, dropout=0.0, max_tokens=256,
                         epochs=2, lr=3e-3, warmup_steps=5, average_last=2, valid_sentences=8,
                         mixed_precision="no", log_every=5)


def _files(tmp_path):
    for split, rows in (("train", SENTS), ("val", SENTS[:8])):
        (tmp_path / f"{split}.en").write_text("\n".join(rows) + "\n")
        (tmp_path / f"{split}.de").write_text("\n".join(r.lower() for r in rows) + "\n")  # a "lowercasing" task
    return tmp_path


def test_bpe_appends_eos_and_round_trips():
    tok = train_bpe(SENTS, 300)
    ids = tok("The cat sat.")["input_ids"]
    assert ids[-1] == tok.eos_token_id and tok.pad_token_id == 0 and tok.bos_token_id == 1
    assert tok.decode(ids, skip_special_tokens=True).strip() == "The cat sat."


def test_token_batches_respect_the_budget_and_cover_every_pair():
    src = [3, 5, 9, 2, 7, 7, 12, 4]
    tgt = [4, 5, 8, 3, 6, 9, 11, 4]
    batches = token_batches(src, tgt, max_tokens=40, seed=0)
    assert sorted(i for b in batches for i in b) == list(range(8))
    for b in batches:
        assert len(b) * max(max(src[i], tgt[i]) for i in b) * 2 <= 40 or len(b) == 1


def test_inverse_sqrt_schedule():
    f = lr_lambda("inverse_sqrt", 4, 100)
    assert f(0) == pytest.approx(0.25) and f(3) == pytest.approx(1.0)
    assert f(15) == pytest.approx(math.sqrt(4 / 16))
    assert TrainConfig(schedule="inverse_sqrt", warmup_steps=4).warmup_steps == 4
    with pytest.raises(ConfigError, match="heads"):
        TranslationConfig(d_model=30, heads=4)


def test_training_learns_resumes_and_averages(tmp_path):
    d = _files(tmp_path)
    train = sf.load_task("translation", str(d / "train"), pair=("en", "de"))
    valid = sf.load_task("translation", str(d / "val"), pair=("en", "de"))
    sm, res = train_translation(train, valid, TINY, out_dir=tmp_path / "run")
    losses = [h["loss"] for h in res.history if "loss" in h]
    assert res.steps > 0 and losses[-1] < losses[0]
    ckpts = sorted((tmp_path / "run" / "checkpoints").glob("step-*"))
    assert len(ckpts) == 2  # the last two epoch checkpoints, averaged into the final weights
    sds = [torch.load(p / "custom_checkpoint_0.pkl") for p in ckpts]
    k = "model.encoder.layers.0.fc1.weight"
    torch.testing.assert_close(sm.model.state_dict()[k], (sds[0][k] + sds[1][k]) / 2)
    again, res2 = train_translation(train, valid, TINY, out_dir=tmp_path / "run")  # finished: nothing re-run
    assert res2.resumed_from == res.steps
    torch.testing.assert_close(again.model.state_dict()[k], sm.model.state_dict()[k])


def test_train_and_translate_cli(tmp_path, capsys):
    d = _files(tmp_path)
    rc = main(["train", "--data", str(d / "train"), "--valid", str(d / "val"), "--max-steps", "6", "--vocab-size", "300",
               "--d-model", "32", "--layers", "1", "--heads", "2", "--ffn", "64", "--max-tokens", "256",
               "--warmup-steps", "2", "--out", str(tmp_path / "model")])
    assert rc in (0, None)
    m = sf.load(tmp_path / "model")
    assert type(m.model).__name__ == "SlimTransformerForSeq2SeqLM" and m.kind == "seq2seq-lm"
    (tmp_path / "in.txt").write_text("A cat sits.\nThe dog runs.\n")
    capsys.readouterr()
    main(["translate", str(tmp_path / "model"), "--input", str(tmp_path / "in.txt"), "--beams", "2"])
    assert len(capsys.readouterr().out.strip("\n").split("\n")) == 2
    assert main(["translate", str(tmp_path / "model"), "--input", str(tmp_path / "missing.txt")]) == 2


def test_a_student_of_fewer_layers_trains_on_the_teachers_translations(tmp_path):
    d = _files(tmp_path)
    train = sf.load_task("translation", str(d / "train"), pair=("en", "de"))
    cfg = TranslationConfig(**{**TINY.__dict__, "layers": 2, "epochs": 1})
    teacher, _ = train_translation(train, None, cfg)
    hyps = [teacher.tokenizer.decode(o, skip_special_tokens=True).strip() for o in
            teacher.model.generate(**teacher.tokenize([p[0] for p in train.examples[:32]], 64))]
    kd = sf.Task("translation", list(zip([p[0] for p in train.examples[:32]], hyps)), "teacher outputs")
    student = sf.shrink_layers(teacher, {"encoder": [0, 1], "decoder": [1]})
    sm, res = train_translation(kd, None, cfg, init=student)
    assert sm is student and res.steps > 0 and len(sm.model.model.decoder.layers) == 1
