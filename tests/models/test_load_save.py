import json

import pytest
import torch

from slimformer.core.errors import ModelLoadError, SlimformerError
from slimformer.models import load, save
from slimformer.testing import tiny_slim

CASES = [("bert", "embedding"), ("bert", "classification"), ("mpnet", "embedding"), ("llama", "causal-lm"),
         ("gpt2", "causal-lm"), ("qwen2", "causal-lm"), ("t5", "seq2seq-lm"), ("bart", "seq2seq-lm")]
TEXTS = ["the cat sits on the red car", "a dog runs in the city at night"]


def _outputs(sm):
    enc = sm.tokenize(TEXTS)
    if sm.kind == "seq2seq-lm":
        enc["decoder_input_ids"] = enc["input_ids"][:, :4]
    out = sm.model(**enc)
    return out.last_hidden_state if sm.kind == "embedding" else out.logits


@pytest.mark.parametrize("family,kind", CASES)
def test_save_load_identical_outputs(tmp_path, family, kind):
    sm = tiny_slim(family, kind)
    folder = save(sm, tmp_path / "m")
    sm2 = load(folder)
    assert sm2.kind == kind
    assert torch.equal(_outputs(sm), _outputs(sm2))
    meta = json.loads((folder / "slimformer.json").read_text())
    assert meta["kind"] == kind


def test_saved_folder_loads_with_plain_transformers(tmp_path):
    from transformers import AutoModel

    sm = tiny_slim("bert", "embedding")
    folder = save(sm, tmp_path / "m")
    plain = AutoModel.from_pretrained(folder)
    enc = sm.tokenize(TEXTS)
    assert torch.equal(plain(**enc).last_hidden_state, sm.model(**enc).last_hidden_state)


def test_embedding_pooling_round_trips(tmp_path):
    sm = tiny_slim("bert", "embedding")
    sm.pooling.mode = "cls"
    sm2 = load(save(sm, tmp_path / "m"))
    assert sm2.pooling.mode == "cls" and sm2.pooling.normalize
    assert torch.equal(sm.embed(TEXTS), sm2.embed(TEXTS))


def test_save_refuses_foreign_folder_and_leaves_it_alone(tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "notes.txt").write_text("precious")
    with pytest.raises(SlimformerError, match="did not write"):
        save(tiny_slim(), d)
    assert (d / "notes.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no temp folder left behind


def test_save_replaces_previous_slimformer_output(tmp_path):
    a, b = tiny_slim(seed=0), tiny_slim(seed=1)
    save(a, tmp_path / "m")
    save(b, tmp_path / "m")
    assert torch.equal(_outputs(load(tmp_path / "m")), _outputs(b))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_failed_save_leaves_no_partial_folder(tmp_path, monkeypatch):
    sm = tiny_slim()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sm.tokenizer, "save_pretrained", boom)
    with pytest.raises(RuntimeError):
        save(sm, tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_load_errors_are_clear(tmp_path):
    f = tmp_path / "weights.txt"
    f.write_text("x")
    with pytest.raises(ModelLoadError, match="not a model"):
        load(f)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="without config.json"):
        load(tmp_path / "empty")
    with pytest.raises(ModelLoadError, match="no such file"):
        load(str(tmp_path / "missing" / "model"))
    with pytest.raises(ModelLoadError, match="kind"):
        load(save(tiny_slim(), tmp_path / "m"), kind="speech")


def test_hub_id_offline_gives_clear_error(monkeypatch):
    import huggingface_hub

    def offline(*a, **k):
        raise huggingface_hub.errors.LocalEntryNotFoundError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ModelLoadError, match="could not fetch 'org/some-model'.*offline"):
        load("org/some-model")


def test_gguf_that_is_not_gguf(tmp_path):
    f = tmp_path / "bad.gguf"
    f.write_bytes(b"not a gguf")
    with pytest.raises(ModelLoadError, match="GGUF"):
        load(f)


def test_plain_save_pretrained_of_a_quantized_model_refuses_and_points_to_save(tmp_path):
    import pytest

    import slimformer as sf
    from slimformer.core.errors import SlimformerError
    from slimformer.testing import tiny_output, tiny_slim

    sm = tiny_slim("llama", "causal-lm")
    sf.quantize_(sm, sf.WeightOnlyConfig(bits=4, group_size=16))
    with pytest.raises(SlimformerError, match="slimformer.save"):
        sm.model.save_pretrained(tmp_path / "plain")
    assert not (tmp_path / "plain").exists()
    again = sf.load(sf.save(sm, tmp_path / "ours"))       # slimformer's own save still works, and round-trips
    assert (tiny_output(again) == tiny_output(sm)).all()
    with pytest.raises(SlimformerError, match="slimformer.save"):
        again.model.save_pretrained(tmp_path / "plain2")
    float_model = tiny_slim("llama", "causal-lm")          # an unquantized model saves with transformers as usual
    float_model.model.save_pretrained(tmp_path / "float")
    assert (tmp_path / "float" / "config.json").exists()


def test_saved_encoder_loads_in_sentence_transformers_with_a_model_card(tmp_path):
    import json

    import pytest
    import torch

    import slimformer as sf
    from slimformer.testing import tiny_slim

    st = pytest.importorskip("sentence_transformers")
    sm = tiny_slim("bert", "embedding")
    sf.prune_(sm, sf.FFNPruningConfig(amount=0.5))
    folder = sf.save(sm, tmp_path / "m")
    cfg = json.loads((folder / "config_sentence_transformers.json").read_text())
    assert cfg["similarity_fn_name"] == "cosine" and "sentence_transformers" in cfg["__version__"]
    card = (folder / "README.md").read_text()
    assert "library_name: sentence-transformers" in card and "`prune_ffn`" in card
    texts = ["the cat sits on the red car", "a dog runs in the city"]
    model = st.SentenceTransformer(str(folder), device="cpu")
    assert torch.allclose(torch.tensor(model.encode(texts)), sm.embed(texts), atol=1e-5)
