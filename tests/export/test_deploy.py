"""The `deploy` step: times the candidate runtimes on this machine and ends the recipe with the
faster one (an int8 ONNX folder or the bf16 PyTorch model); both save and reload."""
import pytest
import torch

import slimformer as sf
from slimformer.core import hardware
from slimformer.core.errors import ConfigError
from slimformer.recipes import CompressOptions
from slimformer.evaluate import EvalOptions, TaskOptions, TimingOptions
from slimformer.export import runtime
from slimformer.export.runtime import openvino_available
from slimformer.testing import tiny_slim

pytest.importorskip("onnxruntime")
TEXTS = sf.sample_sentences()[:32]
FAST = CompressOptions(evaluate=EvalOptions(
    timing=TimingOptions(seq_len=16, batch_size=4, warmup=1, repeats=2, throughput_repeats=1),
    task=TaskOptions(progress=False)), calibration_samples=16)


def test_deploy_times_both_candidates_and_writes_the_faster(tmp_path, monkeypatch):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx512f", "amx_bf16"})
    sm = tiny_slim("bert", "embedding")
    res = sf.compress(sm, [sf.export.DeployConfig(repeats=2)], None, tmp_path / "out", FAST)
    d = res.steps[0].details
    from slimformer.export.openvino import nncf_available

    ov = ({"openvino-int8"} if openvino_available() else set()) | ({"openvino-int8-static"} if nncf_available() else set())
    assert set(d["throughput"]) == {"onnx-int8", "bf16"} | ov and d["picked"] == max(d["throughput"], key=d["throughput"].get)
    out = sf.load(tmp_path / "out")
    if d["picked"] == "bf16":
        assert next(out.model.parameters()).dtype == torch.bfloat16
    else:
        assert (tmp_path / "out" / "slimformer_onnx.json").exists()
        assert out.runtime == ("openvino" if d["picked"].startswith("openvino") else "onnxruntime")
    assert out.embed(TEXTS[:2]).shape == (2, sm.model.config.hidden_size)


def test_deploy_without_native_bf16_or_openvino_is_the_int8_export(tmp_path, monkeypatch):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx2"})
    monkeypatch.setattr(runtime, "openvino_available", lambda: False)
    from slimformer.export import openvino

    monkeypatch.setattr(openvino, "nncf_available", lambda: False)
    sm = tiny_slim("bert", "embedding")
    res = sf.compress(sm, [sf.export.DeployConfig()], None, tmp_path / "out", FAST)
    said = " ".join(res.steps[0].warnings)
    assert res.steps[0].details["picked"] == "onnx-int8" and "bf16 not tried" in said and "openvino is not installed" in said
    assert (tmp_path / "out" / "slimformer_onnx.json").exists()
    with pytest.raises(ConfigError, match="no candidate can run"):
        sf.compress(tiny_slim(), [sf.export.DeployConfig(candidates=("bf16",))], None, None, FAST)
    with pytest.raises(ConfigError, match="accepted: a non-empty list of onnx-int8, openvino-int8, openvino-int8-static, bf16"):
        sf.export.DeployConfig(candidates=("tensorrt",))


def test_deploy_openvino_candidate_writes_a_folder_that_reloads_on_openvino(tmp_path, monkeypatch):
    """Only the OpenVINO candidate: the int8-weights export, reloaded from --out with OpenVINO."""
    pytest.importorskip("openvino")
    sm = tiny_slim("bert", "embedding")
    res = sf.compress(sm, [sf.export.DeployConfig(candidates=("openvino-int8",))], None, tmp_path / "out", FAST)
    assert res.steps[0].details["picked"] == "openvino-int8"
    out = sf.load(tmp_path / "out")
    assert out.runtime == "openvino" and out.meta["quantize"] == "int8-weights"
    cos = torch.nn.functional.cosine_similarity(out.embed(TEXTS[:4]), sm.embed(TEXTS[:4]))
    assert cos.min() > 0.98


def test_nncf_static_int8_export_runs_on_openvino_and_reloads(tmp_path):
    """quantize="int8-nncf": NNCF's static int8 saved as OpenVINO IR; the folder names OpenVINO and
    model.xml, counts the parameters, reloads with sf.load and stays close to the float model; as a
    deploy candidate it is built, timed and can be picked."""
    pytest.importorskip("nncf")
    pytest.importorskip("openvino")
    from slimformer.export import export_onnx, load_onnx

    sm = tiny_slim("bert", "embedding")
    folder = export_onnx(sm, tmp_path / "nncf", quantize="int8-nncf", calibration_texts=TEXTS)
    art = load_onnx(folder, threads=1)
    assert art.runtime == "openvino" and art.meta["model_file"] == "model.xml" and (folder / "model.bin").exists()
    assert not (folder / "model.onnx").exists()
    steps = {s["step"]: s for s in art.meta["steps"]}
    assert steps["nncf_quantize"]["calibration_texts"] == 128 and steps["nncf_quantize"]["calibration_batches"] == 16
    plain = export_onnx(sm, tmp_path / "plain", quantize=None, optimize=False)
    assert art.num_params() == load_onnx(plain).num_params()
    assert 0 < art.disk_bytes()["bytes"] < sum(p.numel() * 4 for p in sm.model.parameters())
    cos = torch.nn.functional.cosine_similarity(sf.load(folder).embed(TEXTS[:4]), sm.embed(TEXTS[:4]))
    assert cos.min() > 0.95
    res = sf.compress(tiny_slim("bert", "embedding"), [sf.export.DeployConfig(candidates=("openvino-int8-static",))],
                      None, tmp_path / "out", FAST)
    assert res.steps[0].details["picked"] == "openvino-int8-static"
    assert sf.load(tmp_path / "out").meta["quantize"] == "int8-nncf"
