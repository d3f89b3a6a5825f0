import json
import subprocess
import sys

import pytest

from slimformer.cli import main
from slimformer.models import save
from slimformer.testing import tiny_slim


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert "slimformer 0." in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["compress", "--help"])
    assert "--recipe" in capsys.readouterr().out


def test_console_script_installed():
    out = subprocess.run([sys.executable, "-m", "slimformer.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "inspect" in out.stdout and "compress" in out.stdout


def test_inspect_tiny(tmp_path, capsys):
    folder = save(tiny_slim("llama", "causal-lm"), tmp_path / "m")
    assert main(["inspect", str(folder), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["family"] == "llama" and len(s["layers"]) == 2
    assert s["layers"][0]["heads"] == 4 and s["layers"][0]["kv_heads"] == 2 and s["layers"][0]["gated"]
    assert main(["inspect", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "kv heads" in out and "LlamaForCausalLM" in out


def test_inspect_kernels(tmp_path, capsys, monkeypatch):
    import slimformer as sf

    monkeypatch.delenv("SLIMFORMER_KERNELS", raising=False)
    sm = tiny_slim("llama", "causal-lm")
    sf.quantize_(sm, sf.WeightOnlyConfig(bits=4, group_size=16))
    folder = save(sm, tmp_path / "q")
    assert main(["inspect", "--kernels", str(folder), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert {r["op"] for r in s["kernels"]} >= {"int8_linear", "int4_linear"}
    assert "int4_linear" in s["model_uses"] and "cpu_capability" in s["cpu"]
    monkeypatch.setenv("SLIMFORMER_KERNELS", "int4_linear=dequant")
    from slimformer.core.kernels import set_kernels

    set_kernels(int4_linear=None)
    assert main(["inspect", "--kernels", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "int4_linear -> dequant" in out and "SLIMFORMER_KERNELS" in out
    monkeypatch.setenv("SLIMFORMER_KERNELS", "int4_linear=fastest")
    assert main(["inspect", "--kernels"]) == 2
    err = capsys.readouterr().err
    assert "accepted: int4pack, dequant" in err and err.count("\n") == 1
    monkeypatch.delenv("SLIMFORMER_KERNELS")
    set_kernels(int4_linear=None)


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    folder = save(tiny_slim(), tmp_path / "m")
    assert main(["inspect", str(tmp_path / "missing" / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("slimformer: error:") and "Traceback" not in err and err.count("\n") == 1
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,notanumber\n")
    assert main(["evaluate", str(folder), "--task", "stsb", "--data", str(bad), "--no-efficiency"]) == 2
    assert "bad.csv" in capsys.readouterr().err
    assert main(["evaluate", str(folder), "--task", "lm", "--data", str(bad), "--no-efficiency"]) == 2
    assert "needs a model of kind causal-lm" in capsys.readouterr().err
    assert main(["compress", str(folder), "--recipe", "nope", "--out", str(tmp_path / "o")]) == 2
    assert "built-in recipe" in capsys.readouterr().err


def test_evaluate_and_compress_tiny(tmp_path, capsys):
    folder = save(tiny_slim(), tmp_path / "m")
    data = tmp_path / "sts.csv"
    data.write_text('the cat sits,a cat sits,4.5\nthe dog runs,the sky is blue,0.5\nred car,the sun,0.0\n')
    out = tmp_path / "r.json"
    assert main(["evaluate", str(folder), "--task", "stsb", "--data", str(data), "--out", str(out),
                 "--seq-len", "16", "--reference", str(folder)]) == 0
    r = json.loads(out.read_text())
    assert "spearman" in r["metrics"] and r["fidelity"]["cosine"] > 0.999 and r["efficiency"]["bytes"] > 0
    assert main(["compress", str(folder), "--recipe", "baseline", "--out", str(tmp_path / "c"),
                 "--no-efficiency"]) == 0
    assert (tmp_path / "c" / "report.md").exists() and (tmp_path / "c" / "result.json").exists()


def test_quantize_command_and_bad_scheme(tmp_path, capsys):
    import torch

    import slimformer as sf
    from slimformer.core import step_details

    folder = save(tiny_slim("llama", "causal-lm"), tmp_path / "m")
    data = tmp_path / "calib.txt"
    data.write_text("\n".join(sf.sample_sentences()[:40]))
    assert main(["quantize", str(folder), "--scheme", "w4-gptq-g32", "--data", str(data), "--out", str(tmp_path / "q")]) == 0
    q = sf.load(tmp_path / "q")
    assert q.meta["steps"][0]["algorithm"] == "gptq"
    ids = torch.tensor([[4, 7, 33, 68, 5]])
    assert q.model(ids).logits.shape == (1, 5, 99)
    assert main(["quantize", str(folder), "--scheme", "w4-awq", "--data", str(data), "--out", str(tmp_path / "a")]) == 0
    a = sf.load(tmp_path / "a")
    assert [s["method"] for s in a.meta["steps"]] == ["awq", "weight_only"]
    assert "layer groups scaled" in capsys.readouterr().err
    assert a.model(ids).logits.shape == (1, 5, 99)
    assert main(["quantize", str(folder), "--scheme", "w4-gptq-rot", "--data", str(data), "--out", str(tmp_path / "r")]) == 0
    r = sf.load(tmp_path / "r")
    assert r.meta["steps"][0]["method"] == "rotate" and step_details(r, "rotate")["residual"] == "hadamard"
    assert (tmp_path / "r" / "result.json").exists()  # quantize runs through the pipeline
    assert "rotate: residual stream" in capsys.readouterr().err
    assert r.model(ids).logits.shape == (1, 5, 99)
    bert = save(tiny_slim("bert", "embedding"), tmp_path / "b")
    assert main(["quantize", str(bert), "--scheme", "w4-gptq-rot", "--data", str(data), "--out", str(tmp_path / "rb")]) == 2
    assert "cannot be rotated: needs a pre-norm model" in capsys.readouterr().err and not (tmp_path / "rb").exists()
    assert main(["quantize", str(folder), "--scheme", "int3", "--out", str(tmp_path / "x")]) == 2
    assert "accepted: int8" in capsys.readouterr().err
    # mixed int4/int8 by sensitivity
    assert main(["quantize", str(folder), "--scheme", "w4", "--max-drop", "0", "--fallback", "int8", "--max-kept", "3",
                 "--data", str(data), "--out", str(tmp_path / "mix")]) == 0
    mix = sf.load(tmp_path / "mix")
    bits = [m.bits for m in mix.model.modules() if hasattr(m, "bits")]
    assert bits.count(8) == 3 and bits.count(4) == len(bits) - 3
    assert "kept int8 (3)" in capsys.readouterr().err
    assert main(["quantize", str(folder), "--scheme", "w4", "--max-drop", "0", "--fallback", "int4-g32", "--max-kept", "2",
                 "--search-texts", "4", "--data", str(data), "--out", str(tmp_path / "mix32")]) == 0
    assert "kept int4_g32 (2)" in capsys.readouterr().err
    mix = sf.load(tmp_path / "mix32")
    assert sum(bool(getattr(m, "float_zeros", False)) for m in mix.model.modules()) == 2
    assert main(["quantize", str(folder), "--scheme", "int8", "--max-drop", "0.1", "--fallback", "int8",
                 "--out", str(tmp_path / "y")]) == 2
    assert "fallback='int8'" in capsys.readouterr().err
    assert main(["quantize", str(folder), "--scheme", "w4", "--fallback", "int8", "--out", str(tmp_path / "z")]) == 2
    assert "only apply with --max-drop" in capsys.readouterr().err
    assert main(["quantize", str(folder), "--scheme", "w4", "--search-texts", "4", "--out", str(tmp_path / "z")]) == 2
    assert "--search-texts only apply with --max-drop" in capsys.readouterr().err


def test_export_command(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    import slimformer as sf
    from slimformer.export import load_onnx

    folder = save(tiny_slim("bert", "embedding"), tmp_path / "m")
    assert main(["export", str(folder), "--onnx", "--out", str(tmp_path / "o")]) == 0
    o = load_onnx(tmp_path / "o")
    ref = sf.load(folder)
    texts = ["the cat sits on the red car", "a dog runs"]
    assert (o.embed(texts) - ref.embed(texts)).abs().max().item() < 1e-4
    assert main(["export", str(folder), "--onnx", "--out", str(folder)]) == 2  # would overwrite the model
    assert "slimformer: error:" in capsys.readouterr().err


def test_export_int8_static_command(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    import json

    folder = save(tiny_slim("bert", "embedding"), tmp_path / "m")
    data = tmp_path / "calib.txt"
    data.write_text("\n".join(["the cat sits on the red car", "a dog runs in the city", "what is this ?"] * 4))
    assert main(["export", str(folder), "--onnx", "--quantize", "int8-static", "--data", str(data),
                 "--out", str(tmp_path / "o")]) == 0
    assert "int8-static" in capsys.readouterr().out
    meta = json.loads((tmp_path / "o" / "slimformer_onnx.json").read_text())
    step = next(s for s in meta["steps"] if s["step"] == "quantize_static")
    assert step["calibration_texts"] == 128  # the 12 lines, cycled to calibration_samples


def test_prune_distill_and_finetune_commands(tmp_path, capsys):
    import slimformer as sf

    folder = save(tiny_slim("bert", "embedding", intermediate_size=64), tmp_path / "m")
    assert main(["prune", str(folder), "--structure", "ffn", "--amount", "0.5", "--out", str(tmp_path / "p")]) == 0
    assert sf.load(tmp_path / "p").model.config.intermediate_size == 32
    assert (tmp_path / "p" / "result.json").exists()
    assert main(["prune", str(folder), "--method", "magnitude", "--amount", "1.3", "--out", str(tmp_path / "x")]) == 2
    assert "amount=1.3 is out of range" in capsys.readouterr().err and not (tmp_path / "x").exists()
    sents = tmp_path / "s.txt"
    sents.write_text("\n".join(sf.sample_sentences()[:64]))
    assert main(["distill", "--teacher", str(folder), "--keep-layers", "1", "--unlabeled", str(sents),
                 "--max-steps", "4", "--batch-size", "16", "--out", str(tmp_path / "d")]) == 0
    student = sf.load(tmp_path / "d")
    assert len(student.model.encoder.layer) == 1
    assert main(["distill", "--teacher", str(folder), "--keep-layers", "0,9", "--unlabeled", str(sents),
                 "--out", str(tmp_path / "bad")]) == 2
    assert "out of range; accepted: 0..1" in capsys.readouterr().err
    tsv = tmp_path / "c.tsv"
    tsv.write_text("\n".join(f"{t}\t{i % 2}" for i, t in enumerate(sf.sample_sentences()[:40])))
    assert main(["finetune", str(folder), "--task", "classification", "--data", str(tsv), "--max-steps", "3",
                 "--batch-size", "8", "--out", str(tmp_path / "f")]) == 0
    assert sf.load(tmp_path / "f").kind == "classification"
