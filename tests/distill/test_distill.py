"""Students, distillation and fine-tuning on tiny models; the distill recipe step."""
import pytest
import torch

import slimformer as sf
from slimformer.core.errors import ConfigError
from slimformer.testing import tiny_output, tiny_slim

TEXTS = sf.sample_sentences()[:64]


def test_shrink_layers_keeps_the_chosen_layers_and_leaves_the_teacher():
    t = tiny_slim("bert", "embedding")
    s = sf.shrink_layers(t, [1])
    assert len(s.model.encoder.layer) == 1 and len(t.model.encoder.layer) == 2
    assert torch.equal(s.model.encoder.layer[0].output.dense.weight, t.model.encoder.layer[1].output.dense.weight)
    assert s.model.config.num_hidden_layers == 1 and s.pooling == t.pooling
    with pytest.raises(ConfigError, match=r"layers \[5\] out of range; accepted: 0..1"):
        sf.shrink_layers(t, [0, 5])


@pytest.mark.parametrize("losses", [("embedding_mse",), ("embedding_cosine", "hidden_mse"), ("minilm_relation",),
                                    ("attention_kl",)])
def test_distill_embedding_student_gets_closer(tmp_path, losses):
    teacher = tiny_slim("bert", "embedding")
    student = tiny_slim("bert", "embedding", seed=1, num_hidden_layers=1)  # fresh, far from the teacher
    ref = teacher.embed(TEXTS[:16])
    before = torch.nn.functional.cosine_similarity(student.embed(TEXTS[:16]), ref).mean()
    res = sf.distill(student, teacher, TEXTS, sf.DistillConfig(losses=losses, max_steps=40, lr=2e-3, batch_size=16),
                     out_dir=tmp_path / "d")
    after = torch.nn.functional.cosine_similarity(student.embed(TEXTS[:16]), ref).mean()
    assert res.steps == 40 and (tmp_path / "d" / "metrics.jsonl").exists()
    if "embedding_mse" in losses or "embedding_cosine" in losses:
        assert after > before
    first = next(h for h in res.history if "loss" in h)["loss"]
    assert res.final_loss < first


def test_kd_on_a_classifier_with_labels(tmp_path):
    teacher = tiny_slim("bert", "classification")
    student = sf.shrink_layers(teacher, [0])
    p = tmp_path / "c.tsv"
    p.write_text("\n".join(f"{t}\t{i % 2}" for i, t in enumerate(TEXTS)))
    task = sf.load_task("classification", p)
    res = sf.distill(student, teacher, task, sf.DistillConfig(losses=("kd",), max_steps=10, batch_size=16),
                     eval_task=task, out_dir=tmp_path / "o")
    assert res.best is not None and "accuracy" in res.best


def test_different_tokenizers_are_refused_for_token_level_losses():
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    t = tiny_slim("bert", "embedding")
    s = sf.shrink_layers(t, [0])
    tok = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, "x": 2}, unk_token="[UNK]"))
    s.tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")
    with pytest.raises(ConfigError, match="tokenizers differ"):
        sf.distill(s, t, TEXTS, sf.DistillConfig(losses=("hidden_mse",), max_steps=1))


def test_bad_distill_configs():
    with pytest.raises(ConfigError, match="temperature=0"):
        sf.DistillConfig(temperature=0)
    with pytest.raises(ConfigError, match="unknown distillation loss 'mse'"):
        sf.DistillConfig(losses=("mse",))


def test_recipe_prunes_then_recovers_from_the_original(tmp_path):
    sm = tiny_slim("bert", "embedding", intermediate_size=64)
    data = tmp_path / "u.txt"
    data.write_text("\n".join(sf.sample_sentences()))
    recipe = {"name": "prune-recover", "steps": [
        {"method": "prune_ffn", "amount": 0.5},
        {"method": "distill", "unlabeled": str(data), "max_steps": 20, "lr": 1e-3, "batch_size": 16}]}
    ref = tiny_output(sm)
    res = sf.compress(sm, recipe, None, tmp_path / "o", sf.CompressOptions(evaluate=sf.EvalOptions(efficiency=False)))
    assert [s.method for s in res.steps] == ["prune_ffn", "distill"]
    assert res.steps[1].details["steps"] == 20 and res.steps[1].details["curve"]
    assert sf.load(tmp_path / "o").model.config.intermediate_size == 32
    assert tiny_output(sm).shape == ref.shape


def test_finetune_makes_a_classifier_and_trains_stsb_embeddings(tmp_path):
    enc = tiny_slim("bert", "embedding")
    p = tmp_path / "c.tsv"
    p.write_text("\n".join(f"{t}\t{i % 2}" for i, t in enumerate(TEXTS)))
    task = sf.load_task("classification", p)
    from slimformer.distill import to_classifier

    fresh = to_classifier(enc, task)  # the encoder's weights under a new head
    torch.testing.assert_close(fresh.model.base_model.encoder.layer[0].output.dense.weight,
                               enc.model.encoder.layer[0].output.dense.weight)
    clf, res = sf.finetune(enc, task, sf.FinetuneConfig(max_steps=5, batch_size=8))
    assert clf.kind == "classification" and clf.model.config.num_labels == 2 and res.steps == 5
    s = tmp_path / "s.csv"
    import csv

    with open(s, "w", newline="") as f:
        csv.writer(f).writerows([a, b, i % 5] for i, (a, b) in enumerate(zip(TEXTS, TEXTS[1:])))
    model, r2 = sf.finetune(enc, sf.load_task("stsb", s), sf.FinetuneConfig(max_steps=3, batch_size=8))
    assert model is enc and r2.steps == 3


def test_several_teachers_average_their_soft_targets(tmp_path):
    from slimformer.distill.api import Ensemble, model_outputs

    a, b = tiny_slim("bert", "classification", seed=0), tiny_slim("bert", "classification", seed=1)
    enc = a.tokenize(TEXTS[:4])
    with torch.no_grad():
        out = model_outputs(Ensemble([a, b]), dict(enc), {"logits"})
        pa, pb = a.model(**enc).logits.softmax(-1), b.model(**enc).logits.softmax(-1)
    torch.testing.assert_close(out.logits.softmax(-1), (pa + pb) / 2)
    student = sf.shrink_layers(a, [0])
    res = sf.distill(student, [a, b], TEXTS, sf.DistillConfig(losses=("soft",), max_steps=3, batch_size=16))
    assert res.steps == 3
    with pytest.raises(ConfigError, match="different kinds"):
        Ensemble([a, tiny_slim("bert", "embedding")])


def test_sequence_level_kd_on_a_tiny_lm():
    from slimformer.distill import sequence_kd_texts

    teacher = tiny_slim("llama", "causal-lm")
    texts = sequence_kd_texts(teacher, TEXTS[:8], max_new_tokens=4, num_beams=2)
    assert len(texts) == 8 and all(t.startswith(p.split()[0].lower()) or t for t, p in zip(texts, TEXTS))
    student = sf.shrink_layers(teacher, [0])
    enc = student.tokenize(texts)

    def nll():
        with torch.no_grad():
            labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
            return student.model(**enc, labels=labels).loss.item()

    before = nll()
    sf.distill(student, teacher, texts * 4, sf.DistillConfig(losses=("lm",), max_steps=20, lr=3e-3, batch_size=8))
    assert nll() < before  # the student learned the teacher's sequences
    with pytest.raises(ConfigError, match="generates with a causal LM"):
        sequence_kd_texts(tiny_slim("bert", "embedding"), TEXTS[:2])


def test_multitask_student_learns_both_tasks():
    from slimformer.distill import TaskSpec, distill_multitask

    emb_teacher = tiny_slim("bert", "embedding")
    clf_teacher = tiny_slim("bert", "classification", seed=2)
    with torch.no_grad():  # a decisive teacher: its classes differ clearly between texts
        clf_teacher.model.classifier.weight.mul_(50)
    student = tiny_slim("bert", "embedding", seed=5, num_hidden_layers=1)
    ref = emb_teacher.embed(TEXTS[:16])
    before = torch.nn.functional.cosine_similarity(student.embed(TEXTS[:16]), ref).mean()
    heads = distill_multitask(student, [TaskSpec("sts", emb_teacher, TEXTS), TaskSpec("clf", clf_teacher, TEXTS)],
                              sf.DistillConfig(max_steps=80, lr=3e-3, batch_size=16))
    after = torch.nn.functional.cosine_similarity(student.embed(TEXTS[:16]), ref).mean()
    assert after > before and set(heads) == {"clf"}
    with torch.no_grad():
        enc = student.tokenize(TEXTS[:16])
        pt = clf_teacher.model(**enc).logits.softmax(-1)
        ps = heads["clf"](student.embed(TEXTS[:16])).softmax(-1)
    assert (pt.argmax(-1) == ps.argmax(-1)).float().mean() >= 0.75
    with pytest.raises(ConfigError, match="distinct names"):
        distill_multitask(student, [TaskSpec("a", emb_teacher, TEXTS), TaskSpec("a", emb_teacher, TEXTS)])


def test_fresh_narrower_student_from_config():
    from slimformer.distill import student_from_config

    t = tiny_slim("bert", "embedding")
    s = student_from_config(t, hidden_size=16, num_attention_heads=2, intermediate_size=20, num_hidden_layers=1)
    assert s.model.config.hidden_size == 16 and len(s.model.encoder.layer) == 1 and s.tokenizer is t.tokenizer
    res = sf.distill(s, t, TEXTS, sf.DistillConfig(max_steps=5, batch_size=16))  # embedding widths differ: projection
    assert res.steps == 5 and s.embed(["the cat"]).shape == (1, 16)
    with pytest.raises(ConfigError, match="has no 'depth'"):
        student_from_config(t, depth=3)


def test_precision_choice_is_checked():
    with pytest.raises(ConfigError, match="mixed_precision"):
        sf.DistillConfig(mixed_precision="fp8")
    with pytest.raises(ConfigError, match="mixed_precision"):
        sf.FinetuneConfig(mixed_precision="half")
    assert sf.DistillConfig().mixed_precision == "auto"


def test_the_teacher_trains_again_after_being_a_teacher(tmp_path):
    teacher = tiny_slim("bert", "embedding")
    student = sf.shrink_layers(teacher, [0])
    sf.distill(student, teacher, TEXTS, sf.DistillConfig(max_steps=2, batch_size=16, mixed_precision="no"))
    assert all(p.requires_grad for p in teacher.model.parameters())  # frozen only while distilling
    second = sf.shrink_layers(teacher, [1])  # a second student copied from the same teacher trains
    res = sf.distill(second, teacher, TEXTS, sf.DistillConfig(max_steps=2, batch_size=16, mixed_precision="no"))
    assert res.steps == 2
