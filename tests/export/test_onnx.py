"""ONNX export: parity with torch (float32 and int8), reload, clear errors, atomic writes."""
import json

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from slimformer.core.errors import ConfigError, SlimformerError  # noqa: E402
from slimformer.export import ONNX_META_FILE, export_onnx, load_onnx  # noqa: E402
from slimformer.testing import tiny_slim  # noqa: E402

TEXTS = ["the cat sits on the red car", "a dog runs in the city at night", "she reads a very good book",
         "what is this ?", "the old man walks to the house with his small dog"]


def _meta(folder) -> dict:
    return json.loads((folder / ONNX_META_FILE).read_text())


def _steps(folder) -> dict:
    """{step name: record} of an export's slimformer_onnx.json."""
    return {s["step"]: s for s in _meta(folder)["steps"]}


@pytest.fixture(scope="module")
def tiny_bert():
    """hidden 32, 2 layers, 4 heads, FFN 37, vocab 99 (slimformer.testing), mean pooling + normalize.
    Biases and LayerNorm parameters get noise: freshly initialised ones are all 0/1, and the
    exporter stores identical constants once, which would hide miscounted parameters."""
    sm = tiny_slim("bert", "embedding")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in sm.model.parameters():
            if p.dim() == 1:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return sm


@pytest.fixture(scope="module")
def fp32_folder(tiny_bert, tmp_path_factory):
    return export_onnx(tiny_bert, tmp_path_factory.mktemp("onnx") / "fp32")


@pytest.fixture(scope="module")
def int8_folder(tiny_bert, tmp_path_factory):
    return export_onnx(tiny_bert, tmp_path_factory.mktemp("onnx") / "int8", quantize="int8")


def _hidden(model, enc):
    with torch.no_grad():
        return model(**enc).last_hidden_state


@pytest.mark.parametrize("optimize", [True, False])
def test_fp32_export_matches_torch(tiny_bert, tmp_path, optimize):
    folder = export_onnx(tiny_bert, tmp_path / "m", optimize=optimize)
    om = load_onnx(folder, threads=1)
    enc = tiny_bert.tokenize(TEXTS)  # padded batch: masking must be exported as data
    diff = (_hidden(tiny_bert.model, enc) - _hidden(om.model, enc)).abs().max().item()
    assert diff < 1e-4
    assert torch.allclose(tiny_bert.embed(TEXTS), om.embed(TEXTS), atol=1e-5)


def test_fp32_dynamic_axes(tiny_bert, fp32_folder):
    om = load_onnx(fp32_folder)
    for batch, words in ((1, 3), (7, 20)):
        enc = tiny_bert.tokenize([" ".join(["dog"] * words)] * batch)
        out = _hidden(om.model, enc)
        assert out.shape == (batch, words + 2, 32)
        assert (out - _hidden(tiny_bert.model, enc)).abs().max().item() < 1e-4


def _min_cosine(ref, onnx_model) -> float:
    return torch.nn.functional.cosine_similarity(ref.embed(TEXTS), onnx_model.embed(TEXTS)).min().item()


def test_int8_export_close_to_torch(tiny_bert, int8_folder):
    """Tolerance: every embedding has cosine > 0.99 to float32 torch."""
    om = load_onnx(int8_folder)
    assert _min_cosine(tiny_bert, om) > 0.99
    meta = _meta(int8_folder)
    steps = _steps(int8_folder)
    assert meta["quantize"] == "int8"
    assert steps["smooth_graph"]["groups"] == 4  # q/k/v and up inputs of 2 layers (default smooth_roles)
    assert steps["quantize_dynamic"]["ops"]["MatMulInteger"] == 12  # 6 weight MatMuls x 2 layers

def test_int8_export_leaves_caller_model_alone(tmp_path):
    sm = tiny_slim("bert", "embedding")
    before = {k: v.clone() for k, v in sm.model.state_dict().items()}
    folder = export_onnx(sm, tmp_path / "m", quantize="int8", fold_vo=True)  # folds into a copy
    assert all(torch.equal(before[k], v) for k, v in sm.model.state_dict().items())
    steps = _steps(folder)
    assert steps["fold_vo_smoothing"]["attention_blocks"] == 2


def test_smoothing_is_exact_in_float(tiny_bert, fp32_folder):
    """Both SmoothQuant forms only move scale between activations and weights."""
    import copy

    import onnx
    import onnxruntime as ort

    from slimformer.export.onnx import fold_vo_smoothing, smooth_graph

    enc = tiny_bert.tokenize(TEXTS)
    model = copy.deepcopy(tiny_bert.model)
    assert fold_vo_smoothing(model, [enc], alpha=0.8) == 2
    assert not torch.equal(model.encoder.layer[0].attention.output.dense.weight,
                           tiny_bert.model.encoder.layer[0].attention.output.dense.weight)
    assert torch.allclose(_hidden(model, enc), _hidden(tiny_bert.model, enc), atol=1e-5)

    proto = onnx.load(str(fp32_folder / "model.onnx"))
    feeds = [{k: v.numpy() for k, v in enc.items()}]
    info = smooth_graph(proto, feeds, alpha=0.8)
    assert info["groups"] == 8  # q/k/v, o, up, down inputs: 4 per layer
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(None, feeds[0])[0])
    assert torch.allclose(got, _hidden(tiny_bert.model, enc), atol=1e-5)


def test_int8_stores_every_matrix_in_one_byte(int8_folder):
    """Every weight matrix and embedding table is int8/uint8, the token table 4-bit (file size of
    a tiny model is mostly graph overhead, so this checks the tensors, and the slow MiniLM test
    checks bytes)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(int8_folder / "model.onnx"))
    (gbq,) = [n for n in m.graph.node if n.op_type == "GatherBlockQuantized"]
    scales = set(gbq.input[2:])  # float32 (99, 1) scales, uint8 (99, 1) packed zero points
    mats = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer if len(t.dims) == 2 and t.name not in scales}
    assert len(mats) == 12 + 3  # 6 weight matrices x 2 layers + word/position/type embeddings
    assert all(a.dtype.itemsize == 1 for a in mats.values())
    assert mats[gbq.input[0]].shape == (99, 16)  # 32 values per row, two per byte


@pytest.mark.parametrize("block_size", [16, 64])
def test_block_quantized_gather_matches_dequantized_table(tiny_bert, fp32_folder, block_size):
    """GatherBlockQuantized reads our packing exactly: the float32 graph with the token table
    swapped for it equals torch with the table replaced by its dequantized 4-bit copy (block 64
    on a 32-wide table: one short block per row)."""
    import copy

    import onnx
    import onnxruntime as ort

    from slimformer.export.embedding import dequantize_blocks, find_token_gather, quantize_blocks, replace_token_gather

    table = tiny_bert.model.get_input_embeddings().weight.detach()
    proto = onnx.load(str(fp32_folder / "model.onnx"))
    node, why = find_token_gather(proto, table.numpy())
    assert why is None and node.name.endswith("word_embeddings/Gather")
    info = replace_token_gather(proto, node.name, block_size)
    assert info["bytes"] == 99 * (16 + 4 * -(-32 // block_size) + 1)  # codes, float scales, packed zero points
    assert table.numpy().tobytes() not in b"".join(t.raw_data for t in proto.graph.initializer)  # float table gone

    model = copy.deepcopy(tiny_bert.model)
    with torch.no_grad():
        model.get_input_embeddings().weight.copy_(dequantize_blocks(*quantize_blocks(table, block_size), block_size))
    enc = tiny_bert.tokenize(TEXTS)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(None, {k: v.numpy() for k, v in enc.items()})[0])
    assert (got - _hidden(model, enc)).abs().max().item() < 1e-4


def test_block_quantization_math():
    """Codes 0..15, a short last block quantized on its own, constant blocks exact, and the SQNR
    of Gaussian data where 4-bit theory puts it (~23 dB at block 16: step ~ range/15, range of 16
    samples ~ 3.5 sigma)."""
    from slimformer.export.embedding import dequantize_blocks, quantize_blocks
    from slimformer.core.qmath import sqnr

    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 40, generator=g)  # blocks of 16: 16 + 16 + 8
    w[0] = 0.0
    w[1] = -0.3
    w[2, 32:] = torch.linspace(-1e-3, 1e-3, 8)  # the short block has its own, small range
    q, scale, zero = quantize_blocks(w, 16)
    assert q.shape == (64, 40) and scale.shape == zero.shape == (64, 3)
    assert int(q.max()) <= 15 and int(zero.max()) <= 15
    deq = dequantize_blocks(q, scale, zero, 16)
    assert torch.equal(deq[0], w[0]) and torch.allclose(deq[1], w[1])
    assert (deq[2, 32:] - w[2, 32:]).abs().max() < 1e-4  # step 2e-3 / 15
    assert 21.0 < sqnr(w[3:], deq[3:]) < 26.0


def test_int8_4bit_embeddings_close_and_smaller(tiny_bert, int8_folder, tmp_path):
    """The default int8 export stores the token table in 4 bits: smaller than the uint8 table,
    recorded in the metadata, and the embeddings stay as close to torch as the int8 bound
    (cosine > 0.99; the 4-bit table's own SQNR is ~22 dB, and LayerNorm follows the lookup)."""
    eight = export_onnx(tiny_bert, tmp_path / "m8", quantize="int8", embedding_bits=8)
    assert (int8_folder / "model.onnx").stat().st_size < (eight / "model.onnx").stat().st_size
    meta = _meta(int8_folder)
    step = {s["step"]: s for s in meta["steps"]}["embedding_4bit"]
    assert step["applied"] and step["op"] == "com.microsoft.GatherBlockQuantized"
    assert step["bits"] == 4 and step["block_size"] == meta["options"]["embedding_block_size"] == 32
    assert step["sqnr_db"] > 18
    assert "embedding_4bit" not in _steps(eight)
    om = load_onnx(int8_folder)
    assert _min_cosine(tiny_bert, om) > 0.99
    exported = sum(p.numel() for n, p in tiny_bert.model.named_parameters() if not n.startswith("pooler"))
    assert om.num_params() < exported + 5000  # the 4-bit table counts its 99 x 32 values, not its packed bytes
    assert om.num_params() > exported


def test_4bit_embeddings_skipped_when_tables_stay_float(tiny_bert, tmp_path):
    folder = export_onnx(tiny_bert, tmp_path / "m", quantize="int8", quantize_embeddings=False)
    step = _steps(folder)["embedding_4bit"]
    assert not step["applied"] and "quantize_embeddings=False" in step["why"]


def test_plain_ort_recipe_is_available(tiny_bert, tmp_path):
    folder = export_onnx(tiny_bert, tmp_path / "m", quantize="int8", optimize=False, smooth_alpha=None,
                         reduce_range=False, fold_vo=False, embedding_bits=8)
    meta = _meta(folder)
    assert [s["step"] for s in meta["steps"]] == ["export", "quantize_dynamic"]
    assert _min_cosine(tiny_bert, load_onnx(folder)) > 0.99


def test_reload_quacks_like_slim_model(tiny_bert, fp32_folder):
    om = load_onnx(fp32_folder, threads=1)
    assert om.kind == "embedding"
    assert om.pooling == tiny_bert.pooling
    assert om.config.hidden_size == 32 and om.config.model_type == "bert"
    assert om.tokenizer("the cat")["input_ids"] == tiny_bert.tokenizer("the cat")["input_ids"]
    # no pooler in the graph (embedding output is last_hidden_state); buffers add a few constants
    exported = sum(p.numel() for n, p in tiny_bert.model.named_parameters() if not n.startswith("pooler"))
    assert om.num_params() == exported
    # what evaluate's timing passes: no token_type_ids, extra kwargs ignored
    ids = tiny_bert.tokenize(TEXTS[:2])["input_ids"]
    out = om.model(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert out.last_hidden_state.shape == (*ids.shape, 32)
    for name in ("model.onnx", "config.json", "tokenizer.json", "modules.json", "1_Pooling/config.json"):
        assert (fp32_folder / name).exists(), name


@pytest.mark.parametrize("family,kind", [("bert", "classification"), ("gpt2", "causal-lm"), ("llama", "causal-lm")])
def test_logits_kinds_export(tmp_path, family, kind):
    sm = tiny_slim(family, kind)
    folder = export_onnx(sm, tmp_path / "m")
    om = load_onnx(folder)
    enc = sm.tokenize(TEXTS[:2]) if kind == "classification" else {"input_ids": sm.tokenize(TEXTS[:1])["input_ids"]}
    with torch.no_grad():
        ref = sm.model(**enc).logits
    got = om.model(**enc, use_cache=False).logits
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() < 1e-4


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_causal_lm_int8_export(tmp_path, family):
    """Roles are found (GPT-2's Conv1D after ORT's renaming fusions too), smoothing applies, and
    the logits stay close (tolerance: cosine > 0.98 per position on a random tiny model)."""
    sm = tiny_slim(family, "causal-lm")
    folder = export_onnx(sm, tmp_path / "m", quantize="int8", smooth_roles=("qkv", "up", "down"),
                         reduce_range=("qkv", "o"))
    steps = _steps(folder)
    assert steps["smooth_graph"]["groups"] == 6  # 3 smoothed inputs x 2 layers
    assert steps["quantize_dynamic"]["reduce_range_matmuls"] > 0
    ids = sm.tokenize(TEXTS[:1])["input_ids"]
    with torch.no_grad():
        ref = sm.model(input_ids=ids).logits
    got = load_onnx(folder).model(input_ids=ids).logits
    assert torch.nn.functional.cosine_similarity(ref[0], got[0], dim=-1).min().item() > 0.98


def test_unsupported_kind_is_a_clear_error(tmp_path):
    sm = tiny_slim("t5", "seq2seq-lm")
    with pytest.raises(SlimformerError, match="seq2seq-lm.*accepted: embedding, classification, causal-lm"):
        export_onnx(sm, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_refuses_foreign_folder_and_leaves_it_alone(tiny_bert, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(SlimformerError, match="did not write"):
        export_onnx(tiny_bert, out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_bad_options_are_clear_errors(tiny_bert, tmp_path):
    with pytest.raises(ConfigError, match="unknown option.*smooth_alfa"):
        export_onnx(tiny_bert, tmp_path / "m", quantize="int8", smooth_alfa=0.5)
    with pytest.raises(SlimformerError, match="quantize='int4'"):
        export_onnx(tiny_bert, tmp_path / "m", quantize="int4")
    with pytest.raises(SlimformerError, match="smooth_alpha"):
        export_onnx(tiny_bert, tmp_path / "m", quantize="int8", smooth_alpha=1.5)
    with pytest.raises(SlimformerError, match="reduce_range.*unknown role"):
        export_onnx(tiny_bert, tmp_path / "m", quantize="int8", reduce_range=("attn",))
    with pytest.raises(ConfigError, match="embedding_bits: expected one of 8, 4, got 3"):
        export_onnx(tiny_bert, tmp_path / "m", quantize="int8", embedding_bits=3)
    with pytest.raises(ConfigError, match="embedding_bits: .*got True"):
        export_onnx(tiny_bert, tmp_path / "m", quantize="int8", embedding_bits=True)
    with pytest.raises(ConfigError, match="embedding_block_size: expected one of 16, 32, 64, 128, got 24"):
        export_onnx(tiny_bert, tmp_path / "m", quantize="int8", embedding_block_size=24)
    assert not (tmp_path / "m").exists()


def test_load_onnx_on_other_folder_is_clear_error(tmp_path):
    with pytest.raises(SlimformerError, match=ONNX_META_FILE):
        load_onnx(tmp_path)


def test_reexport_replaces_previous_export(tiny_bert, tmp_path):
    out = tmp_path / "m"
    export_onnx(tiny_bert, out)
    (out / "notes.txt").write_text("the user's, not the export's")
    export_onnx(tiny_bert, out, quantize="int8")
    assert (out / "notes.txt").read_text() == "the user's, not the export's"  # a user's file survives
    assert _meta(out)["quantize"] == "int8"
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary folders left


def test_failed_export_leaves_nothing(tiny_bert, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tiny_bert.tokenizer, "save_pretrained", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        export_onnx(tiny_bert, tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_minilm_int8_close_to_fp32(tmp_path, shared_data):
    import csv
    import io

    from slimformer.models import load

    rows = list(csv.reader(io.StringIO((shared_data / "stsb" / "stsb-en-dev.csv").read_text(encoding="utf-8"))))
    texts = [r[0] for r in rows[:32]] + [r[1] for r in rows[:32]]
    sm = load()
    folder = export_onnx(sm, tmp_path / "minilm-int8", quantize="int8")
    om = load_onnx(folder, threads=2)
    cos = torch.nn.functional.cosine_similarity(sm.embed(texts), om.embed(texts))
    assert cos.mean().item() >= 0.995
    fp32_bytes = sum(p.numel() * 4 for p in sm.model.parameters())
    assert (folder / "model.onnx").stat().st_size <= 0.25 * fp32_bytes  # 4-bit token table: ~20.7%


@pytest.fixture(scope="module")
def static_folder(tiny_bert, tmp_path_factory):
    return export_onnx(tiny_bert, tmp_path_factory.mktemp("onnx") / "int8s", quantize="int8-static",
                       calibration_texts=TEXTS * 8)


@pytest.mark.parametrize("observer", ["minmax", "percentile", "mse"])
def test_int8_static_export_close_to_torch(tiny_bert, tmp_path, observer):
    """Tolerance as for dynamic int8 (cosine > 0.99 per embedding): static ranges come from the
    same texts, so on them the error is of the same order (measured ~0.999 on the tiny model)."""
    folder = export_onnx(tiny_bert, tmp_path / "m", quantize="int8-static", static_observer=observer,
                         calibration_texts=TEXTS * 8)
    om = load_onnx(folder)
    assert _min_cosine(tiny_bert, om) > 0.99
    meta = _meta(folder)
    steps = _steps(folder)
    assert meta["quantize"] == "int8-static"
    q = steps["quantize_static"]
    assert q["observer"] == observer
    assert q["ort_calibration_method"] == {"minmax": "MinMax", "percentile": "Percentile", "mse": "Entropy"}[observer]
    assert q["ops"]["QuantizeLinear"] > 0 and "MatMul" in q["ops"]
    assert steps["embedding_4bit"]["applied"] is True
    assert steps["smooth_graph"]["groups"] == 4  # q/k/v and up inputs of 2 layers


def test_int8_static_keeps_activations_int8_between_ops(static_folder, tmp_path):
    """The session's optimized graph: QDQ pairs fused into QLinear* ops that hand int8 tensors to
    each other; the attention mask never gets a QDQ pair."""
    import onnx
    import onnxruntime as ort

    from slimformer.export.onnx import int8_flow

    q = onnx.load(str(static_folder / "model.onnx"))
    qdq_before = sum(n.op_type == "DequantizeLinear" for n in q.graph.node)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.optimized_model_filepath = str(tmp_path / "session.onnx")
    ort.InferenceSession(str(static_folder / "model.onnx"), so, providers=["CPUExecutionProvider"])
    flow = int8_flow(onnx.load(so.optimized_model_filepath))
    assert flow["ops"].get("QLinearMatMul", 0) >= 12  # 6 weight MatMuls x 2 layers (+ attention MatMuls)
    assert flow["int8_edges"] >= 12
    assert flow["ops"].get("DequantizeLinear", 0) < qdq_before / 2  # most pairs were fused away
    steps = _steps(static_folder)
    assert steps["quantize_static"]["per_channel"] is True


def test_mask_readers_find_masked_scores(fp32_folder):
    import onnx

    from slimformer.export.onnx import mask_readers

    readers, mask = mask_readers(onnx.load(str(fp32_folder / "model.onnx")))
    assert len(readers) == 2 and all("attention" in r for r in readers)  # one Add(scores, mask) per layer
    assert mask


def test_int8_static_bad_options_are_clear_errors(tiny_bert, tmp_path):
    with pytest.raises(ConfigError, match="static_observer: expected one of minmax, percentile, mse, got 'kl'"):
        export_onnx(tiny_bert, tmp_path / "m", quantize="int8-static", static_observer="kl")
    with pytest.raises(ConfigError, match=r"static_percentile: expected a number in \(0, 100\], got 120"):
        export_onnx(tiny_bert, tmp_path / "m", quantize="int8-static", static_percentile=120)
    with pytest.raises(ConfigError, match="quantize='int4'.*'int8-static'"):
        export_onnx(tiny_bert, tmp_path / "m", quantize="int4")
    assert not (tmp_path / "m").exists()


def test_int8_weights_export_holds_our_int8_codes_and_runs_on_both_runtimes(tiny_bert, tmp_path):
    """quantize="int8-weights": every weight MatMul reads int8 codes through DequantizeLinear, the
    same codes and scales as slimformer's PyTorch Int8Linear; ONNX Runtime runs the graph (float
    products on the dequantized weights: close to a float model with those weights), OpenVINO runs
    it with run-time activation quantization where installed; the meta names OpenVINO."""
    import onnx
    from onnx import numpy_helper

    from slimformer.quantize.modules import Int8Linear

    folder = export_onnx(tiny_bert, tmp_path / "w8", quantize="int8-weights")
    meta, steps = _meta(folder), _steps(folder)
    assert meta["runtime"] == "openvino" and meta["openvino"]["dynamic_quantization_group_size"] == 384
    assert steps["int8_weights"]["matmuls"] == 12 and steps["int8_weights"]["token_table"]
    proto = onnx.load(str(folder / "model.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dq) == 13 and all(inits[n.input[0]].dtype == "int8" for n in dq)
    q = Int8Linear.from_float(tiny_bert.model.encoder.layer[0].attention.self.query)
    w = tiny_bert.model.encoder.layer[0].attention.self.query.weight.detach().T.numpy()
    assert not any(a.shape == w.shape and (a == w).all() for a in inits.values())  # the float weight is gone
    codes = q.weight_int8.T.numpy()
    match = [n for n in dq if inits[n.input[0]].shape == codes.shape and (inits[n.input[0]] == codes).all()
             and torch.equal(torch.from_numpy(inits[n.input[1]].copy()), q.weight_scale)]
    assert len(match) == 1
    om = load_onnx(folder, runtime="onnxruntime")
    assert om.runtime == "onnxruntime" and _min_cosine(tiny_bert, om) > 0.999
    from slimformer.evaluate import EvalOptions, evaluate

    assert evaluate(om, None, None, EvalOptions(efficiency=False)).env["runtime"]["name"] == "onnxruntime"
    with pytest.raises(Exception, match="runtime='tensorrt'"):
        load_onnx(folder, runtime="tensorrt")
    from slimformer.export.runtime import openvino_available

    if openvino_available():
        import slimformer as sf

        ov = load_onnx(folder, threads=1)
        assert ov.runtime == "openvino" and ov.session.config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] == "384"
        assert _min_cosine(tiny_bert, ov) > 0.98
        assert sf.load(folder).runtime == "openvino"
        env = evaluate(ov, None, None, EvalOptions(efficiency=False)).env["runtime"]
        assert env["name"] == "openvino" and env["INFERENCE_PRECISION_HINT"] == ov.session.precision


def test_int8_weights_rejects_a_bad_group_size(tiny_bert, tmp_path):
    with pytest.raises(ConfigError, match="act_group_size"):
        export_onnx(tiny_bert, tmp_path / "x", quantize="int8-weights", act_group_size=-1)
    assert not (tmp_path / "x").exists()


def test_export_after_uneven_head_pruning_optimizes(tmp_path):
    """3 of 4 heads left (hidden 32 is not a multiple of 3): ONNX Runtime's optimizer is told to read
    the heads from the graph instead of asserting (a planner candidate failed here)."""
    import slimformer as sf
    from slimformer.testing import tiny_slim

    sm = tiny_slim("bert", "embedding")
    sf.prune_(sm, sf.HeadPruningConfig(amount=0.25), data=sf.sample_sentences()[:8])
    folder = export_onnx(sm, tmp_path / "m", optimize=True, quantize="int8")
    assert _min_cosine(sm, load_onnx(folder)) > 0.98
