"""The pipeline issue's promises: export as a step whose artifact is what gets measured, load()
opening exported folders, quantized folders refused by plain loaders, errors that are one line,
nothing half-written, no method family importing another."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import slimformer as sf
from slimformer.cli import main
from slimformer.core.errors import ConfigError, ModelLoadError, SlimformerError
from slimformer.models import save
from slimformer.models.loading import SLIM_WEIGHTS
from slimformer.testing import tiny_output, tiny_slim

pytest.importorskip("onnxruntime")
SRC = Path(sf.__file__).parent
TEXTS = sf.sample_sentences()[:32]
QUICK = sf.EvalOptions(efficiency=False, fidelity_texts=16)


def test_compress_with_export_step_measures_and_writes_the_artifact(tmp_path):
    sm = tiny_slim("bert", "embedding")
    res = sf.compress(sm, [sf.ExportConfig(quantize="int8")], None, tmp_path / "o",
                      sf.CompressOptions(evaluate=QUICK, calibration_samples=16))
    out = tmp_path / "o"
    assert (out / "model.onnx").exists() and (out / "result.json").exists() and (out / "report.md").exists()
    assert res.steps[-1].method == "onnx" and res.steps[-1].details["quantize"] == "int8"
    assert res.compressed.env["model"].endswith("onnx")  # the artifact was measured, not the torch model
    assert res.steps[-1].bytes_after == res.compressed.efficiency.get("bytes", res.steps[-1].bytes_after)
    assert 0.9 < res.compressed.fidelity["cosine"] <= 1.0
    art = sf.load(out)  # load() opens the exported folder
    assert type(art).__name__ == "OnnxSlimModel" and art.kind == "embedding"
    again = sf.evaluate(art, None, sm, QUICK)
    assert again.fidelity["cosine"] == pytest.approx(res.compressed.fidelity["cosine"], abs=1e-6)
    assert not list(tmp_path.glob(".slimformer-work-*"))  # the work folder is gone


def test_export_step_must_be_last_and_validates():
    with pytest.raises(ConfigError, match="must be the last step"):
        sf.compress(tiny_slim("bert", "embedding"), [sf.ExportConfig(), sf.Int8DynamicConfig()], None)
    with pytest.raises(ConfigError, match="quantize='int4' is not accepted"):
        sf.ExportConfig(quantize="int4")
    r = sf.load_recipe([{"method": "onnx", "quantize": "none", "embedding_bits": 8}])
    assert r.steps[0] == sf.ExportConfig(quantize="none", embedding_bits=8)


def test_builtin_int8_recipe_ends_in_onnx_and_torch_one_is_named_for_size():
    assert [s.method for s in sf.load_recipe("int8").steps] == ["onnx"]
    torch_steps = sf.load_recipe("int8-torch")
    assert [s.method for s in torch_steps.steps] == ["smoothquant", "int8_dynamic"]
    assert "for size" in torch_steps.description.lower()


def test_evaluate_cli_opens_an_exported_folder(tmp_path, capsys):
    from slimformer.export import export_onnx

    folder = export_onnx(tiny_slim("bert", "embedding"), tmp_path / "e", quantize="int8",
                         calibration_texts=TEXTS)
    assert main(["evaluate", str(folder), "--no-efficiency", "--out", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["env"]["kind"] == "embedding"


def test_report_says_when_the_model_got_slower():
    from slimformer.report.markdown import speed_summary

    slow = speed_summary({"throughput": 100.0, "latency_ms_p50": 10.0}, {"throughput": 60.0, "latency_ms_p50": 15.0})
    assert "slower than the original: 0.60x" in slow and "method: onnx" in slow
    assert "2.00x as fast" in speed_summary({"throughput": 50.0}, {"throughput": 100.0})


def test_report_keeps_a_small_metric_change_visible():
    from slimformer.report.markdown import _side_by_side

    rows = _side_by_side({"spearman": 86.7201}, {"spearman": 86.7192}, change=True)
    assert rows[0][3] == "-0.0009"


# ------------------------------------------------------------------ quantized folders and plain loaders


def test_quantized_folder_is_refused_by_plain_loaders_and_loads_with_slimformer(tmp_path):
    import transformers as T

    sm = tiny_slim("bert", "embedding")
    sf.quantize_(sm, sf.Int8DynamicConfig())
    folder = sf.save(sm, tmp_path / "q")
    assert (folder / SLIM_WEIGHTS).exists() and not (folder / "model.safetensors").exists()
    assert not (folder / "modules.json").exists()  # no sentence-transformers layout inviting a wrong load
    with pytest.raises(OSError, match="model.safetensors"):
        T.AutoModel.from_pretrained(folder)
    st = pytest.importorskip("sentence_transformers")
    with pytest.raises(Exception):  # no weights it can read: an error, not a random model
        st.SentenceTransformer(str(folder), device="cpu")
    again = sf.load(folder)
    assert again.pooling == sm.pooling and torch.equal(tiny_output(again), tiny_output(sm))


def test_float_folder_still_loads_with_plain_transformers(tmp_path):
    import transformers as T

    sm = tiny_slim("bert", "embedding")
    folder = sf.save(sm, tmp_path / "f")
    plain = T.AutoModel.from_pretrained(folder)
    with torch.no_grad():
        enc = sm.tokenize(["the cat sits"])
        torch.testing.assert_close(plain(**enc).last_hidden_state, sm.model(**enc).last_hidden_state)


# ------------------------------------------------------------------ errors and files


def test_truncated_weights_name_the_file(tmp_path):
    sm = tiny_slim("llama", "causal-lm")
    sf.quantize_(sm, sf.WeightOnlyConfig(bits=4, group_size=16))
    folder = sf.save(sm, tmp_path / "q")
    f = folder / SLIM_WEIGHTS
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match=re.escape(str(f))):
        sf.load(folder)
    plain = sf.save(tiny_slim("bert", "embedding"), tmp_path / "p")
    g = plain / "model.safetensors"
    g.write_bytes(g.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="truncated or damaged"):
        sf.load(plain)


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    folder = save(tiny_slim("bert", "embedding"), tmp_path / "m")
    assert main(["evaluate", str(folder), "--task", "stsb"]) == 2
    assert "needs --data" in capsys.readouterr().err
    assert main(["evaluate", str(folder), "--data", "x.csv"]) == 2
    assert "--data needs --task" in capsys.readouterr().err
    bad = tmp_path / "m" / "slimformer-model.safetensors"
    bad.write_bytes(b"\x00" * 20)
    assert main(["evaluate", str(folder), "--no-efficiency"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("slimformer: error:") and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_out_is_refused_before_any_work(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert main(["quantize", "--scheme", "w4-gptq", "--out", str(ro / "x")]) == 2
        assert "no write permission" in capsys.readouterr().err
    finally:
        ro.chmod(0o700)


def test_out_checks_happen_before_work(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main(["quantize", "--scheme", "w4-gptq", "--out", str(mine)]) == 2  # refused before loading anything
    assert "did not write" in capsys.readouterr().err and (mine / "notes.txt").read_text() == "keep me"
    f = tmp_path / "afile"
    f.write_text("x")
    assert main(["compress", "--recipe", "baseline", "--out", str(f / "sub")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_stale_temporary_folders_are_cleaned_and_umask_respected(tmp_path):
    stale = tmp_path / ".m.tmp-abc123"
    stale.mkdir()
    os.utime(stale, (0, 0))
    fresh = tmp_path / ".m.tmp-live"
    fresh.mkdir()  # another save in progress: left alone
    old = os.umask(0o022)
    try:
        folder = sf.save(tiny_slim("bert", "embedding"), tmp_path / "m")
    finally:
        os.umask(old)
    assert not stale.exists() and fresh.exists()
    assert (folder.stat().st_mode & 0o777) == 0o755
    assert ((folder / "config.json").stat().st_mode & 0o777) == 0o644


def test_reference_default_names_the_packaged_model():
    from slimformer.models.loading import DEFAULT_NAMES, default_model_path

    assert "default" in DEFAULT_NAMES and default_model_path().exists()


def test_stsb_header_is_detected_by_content(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("sentence1,sentence2,score\na,b,1.0\n")
    assert sf.load_task("stsb", p).meta["header"] is True
    p.write_text("a,b,n/a\nc,d,2.0\n")
    with pytest.raises(sf.DataError, match="line 1"):
        sf.load_task("stsb", p)


def test_labels_outside_the_classifier_are_refused(tmp_path):
    sm = tiny_slim("bert", "classification")
    p = tmp_path / "c.tsv"
    p.write_text("the cat\t0\nthe dog\t5\n")
    with pytest.raises(sf.DataError, match=r"labels \[5\] are outside this classifier's 2 classes"):
        sf.evaluate(sm, sf.load_task("classification", p), None, QUICK)


# ------------------------------------------------------------------ design rules


FAMILIES = ("quantize", "prune", "distill", "factorize", "attention", "export")  # train/ is shared


def test_method_families_do_not_import_each_other():
    bad = []
    for fam in FAMILIES:
        for f in (SRC / fam).rglob("*.py") if (SRC / fam).exists() else []:
            text = f.read_text()
            for other in FAMILIES:
                if other == fam or (fam == "export" and other == "quantize"):
                    continue  # the export calls quantize's math (SmoothQuant, block quantization)
                if re.search(rf"from \.\.{other}\b|import slimformer\.{other}\b|from slimformer\.{other}\b", text):
                    bad.append(f"{f.relative_to(SRC)} imports {other}")
    assert not bad, bad


def _import_graph() -> dict:
    """{module: modules it imports} for every slimformer module, imports inside functions too."""
    import ast

    def name(p):
        parts = list(p.relative_to(SRC.parent).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    mods = {name(p): p for p in SRC.rglob("*.py")}
    edges = {m: set() for m in mods}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)] if node.level else []
                target = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module
                hits = [t for t in [target + "." + a.name for a in node.names] + [target] if t in mods and t != m]
                edges[m].update(hits[:1])
            elif isinstance(node, ast.Import):
                edges[m].update(a.name for a in node.names if a.name in mods and a.name != m)
    return edges


def test_no_import_cycles_between_modules():
    edges = _import_graph()
    cycles = []
    for start in edges:  # a path from a module's imports back to itself is a cycle
        seen, todo = set(), list(edges[start])
        while todo:
            m = todo.pop()
            if m == start:
                cycles.append(start)
                break
            if m not in seen:
                seen.add(m)
                todo.extend(edges[m])
    assert not cycles, f"modules on an import cycle: {sorted(cycles)}"
    assert "slimformer.quantize.configs" in edges["slimformer.quantize.schemes"]  # the graph is real


def test_export_auto_keeps_the_faster_graph(tmp_path):
    from slimformer.export import export_onnx

    folder = export_onnx(tiny_slim("bert", "embedding"), tmp_path / "a", quantize="int8", optimize="auto",
                         calibration_texts=TEXTS)
    meta = json.loads((folder / "slimformer_onnx.json").read_text())
    auto = meta["optimize_auto"]
    secs = auto["seconds_per_batch"]
    assert set(secs) == {"optimized", "plain"} and auto["chosen"] == min(secs, key=secs.get)
    assert meta["optimize"] == (auto["chosen"] == "optimized")
    assert not list(folder.glob(".auto-*")) and (folder / "model.onnx").exists()
    assert sf.load(folder).embed(["the cat"]).shape == (1, 32)
    with pytest.raises(ConfigError, match="optimize='fast'"):
        export_onnx(tiny_slim("bert", "embedding"), tmp_path / "b", optimize="fast")


def test_reduce_range_auto_follows_the_cpu(monkeypatch):
    import slimformer.export.options as opts

    monkeypatch.setattr(opts, "has_vnni", lambda: True)
    assert opts._options("int8", None, {})["reduce_range"] == ()
    monkeypatch.setattr(opts, "has_vnni", lambda: False)
    assert opts._options("int8", None, {})["reduce_range"] == ("qkv", "o")
    assert opts._options("int8", None, {"reduce_range": True})["reduce_range"][:2] == ("qkv", "o")


def test_what_a_killed_run_left_is_cleaned_when_its_process_is_gone(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()  # a pid that no longer runs
    left = [tmp_path / f".m.tmp-{dead}-x1y2", tmp_path / f".m.old-{dead}-x1y2", tmp_path / f".slimformer-work-{dead}-ab"]
    live = [tmp_path / f".m.tmp-{os.getpid()}-zz", tmp_path / f".slimformer-work-{os.getppid()}-cd"]
    for p in left + live:
        p.mkdir()
    sf.save(tiny_slim("bert", "embedding"), tmp_path / "m")
    assert not any(p.exists() for p in left) and all(p.exists() for p in live)


def test_a_second_run_on_the_same_out_is_refused_while_the_first_is_alive(tmp_path):
    from slimformer.core.errors import SlimformerError
    from slimformer.models.saving import OutputLock

    out = tmp_path / "o"
    lock = tmp_path / ".o.slimformer-lock"
    lock.write_text(str(os.getppid()))                       # a live process holds it
    with pytest.raises(SlimformerError, match=f"pid {os.getppid()}"):
        sf.compress(tiny_slim(), [sf.Int8DynamicConfig()], None, out, sf.CompressOptions(evaluation=False))
    assert not out.exists()
    lock.write_text("999999999")                              # its process is gone: taken over, then released
    sf.compress(tiny_slim(), [sf.Int8DynamicConfig()], None, out, sf.CompressOptions(evaluation=False))
    assert out.exists() and not lock.exists()


def test_a_users_file_in_an_output_folder_survives_a_re_save(tmp_path):
    folder = sf.save(tiny_slim("bert", "embedding"), tmp_path / "m")
    (folder / "notes.txt").write_text("mine")
    (folder / "docs").mkdir()
    (folder / "docs" / "card.md").write_text("also mine")
    sf.save(tiny_slim("bert", "embedding", seed=1), folder)
    assert (folder / "notes.txt").read_text() == "mine" and (folder / "docs" / "card.md").read_text() == "also mine"
    (folder / "config.json").unlink()
    (folder / "config.json").write_text("{}")                 # a file of slimformer's replaced: still slimformer's
    sf.save(tiny_slim("bert", "embedding"), folder)
    assert json.loads((folder / "config.json").read_text())
