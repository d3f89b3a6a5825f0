"""Bad input, tried as a new user would: every case exits 2 with one line on stderr that names what
was wrong, no traceback, and leaves the user's files as they were."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import slimformer as sf
from slimformer.testing import tiny_slim


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    enc = sf.save(tiny_slim("bert", "embedding"), d / "enc")
    s2s = sf.save(tiny_slim("t5", "seq2seq-lm"), d / "s2s")
    (d / "stsb.csv").write_text("a cat,a dog,3.0\nthe man,a woman,2.5\n")
    (d / "big.csv").write_text("a cat,a dog,3.0\n" + "x" * 200_000 + ",y,1.0\n")
    (d / "out_of_range.csv").write_text("a cat,a dog,3.0\nthe man,a woman,7.5\n")
    (d / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (d / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (d / "empty.yaml").write_text("name: nothing\nsteps: []\n")
    (d / "syntax.yaml").write_text("name: x\nsteps:\n  - method: int8_dynamic\n   embeddings: [\n")
    (d / "sents.txt").write_text("\n".join(sf.sample_sentences()[:32]))
    (d / "notes.txt").write_text("the user's own file\n")
    junk = {}
    for name, mutate in {
        "junk-meta": lambda f: (f / "slimformer.json").write_text("{not json"),
        "junk-modules": lambda f: (f / "modules.json").write_text('{"a": 1}'),
        "junk-config": lambda f: _edit_config(f, hidden_size="big"),
        "more-layers": lambda f: _edit_config(f, num_hidden_layers=4),
        "unknown-type": lambda f: _edit_config(f, model_type="nonsense"),
    }.items():
        f = sf.save(tiny_slim("bert", "embedding"), d / name)
        mutate(f)
        junk[name] = f
    from slimformer.models.surgery import remove_ffn_neurons_

    uneven = tiny_slim("bert", "embedding")
    remove_ffn_neurons_(uneven.model, {0: range(10)})
    uneven = sf.save(uneven, d / "uneven")
    return {"d": d, "enc": enc, "s2s": s2s, "uneven": uneven, **junk}


def _edit_config(folder: Path, **kw):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(kw)
    (folder / "config.json").write_text(json.dumps(cfg))


def snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


CASES = {
    "limit 0": lambda f: ["evaluate", f["enc"], "--task", "stsb", "--data", f["d"] / "stsb.csv", "--limit", "0"],
    "seq-len 0": lambda f: ["evaluate", f["enc"], "--seq-len", "0"],
    "seq-len -3": lambda f: ["evaluate", f["enc"], "--seq-len", "-3"],
    "seq-len too long": lambda f: ["evaluate", f["enc"], "--seq-len", "100000"],
    "threads -2": lambda f: ["evaluate", f["enc"], "--threads", "-2"],
    "ppl-window 0": lambda f: ["evaluate", f["enc"], "--ppl-window", "0"],
    "ppl-stride 0": lambda f: ["evaluate", f["enc"], "--ppl-stride", "0"],
    "stsb score out of range": lambda f: ["evaluate", f["enc"], "--task", "stsb", "--data",
                                          f["d"] / "out_of_range.csv", "--no-efficiency"],
    "translate beams 0": lambda f: ["translate", f["s2s"], "--input", f["d"] / "sents.txt", "--beams", "0"],
    "translate batch 0": lambda f: ["translate", f["s2s"], "--input", f["d"] / "sents.txt", "--batch-size", "0"],
    "translate batch -1": lambda f: ["translate", f["s2s"], "--input", f["d"] / "sents.txt", "--batch-size", "-1"],
    "translate not utf-8": lambda f: ["translate", f["s2s"], "--input", f["d"] / "latin1.txt"],
    "binary recipe": lambda f: ["compress", f["enc"], "--recipe", f["d"] / "binary.yaml", "--out", f["d"] / "o1"],
    "recipe without steps": lambda f: ["compress", f["enc"], "--recipe", f["d"] / "empty.yaml", "--out", f["d"] / "o2"],
    "distill lm loss on an encoder": lambda f: ["distill", "--teacher", f["enc"], "--keep-layers", "0", "--loss", "lm",
                                                "--unlabeled", f["d"] / "sents.txt", "--out", f["d"] / "o3"],
    "junk slimformer.json": lambda f: ["inspect", f["junk-meta"]],
    "junk modules.json": lambda f: ["inspect", f["junk-modules"]],
    "config hidden_size big": lambda f: ["inspect", f["junk-config"]],
    "config with more layers than weights": lambda f: ["inspect", f["more-layers"]],
    "evaluate --out onto a user's file": lambda f: ["evaluate", f["enc"], "--no-efficiency", "--out",
                                                    f["d"] / "notes.txt"],
    "recipe with a YAML syntax error": lambda f: ["compress", f["enc"], "--recipe", f["d"] / "syntax.yaml", "--out",
                                                  f["d"] / "o4"],
    "unknown model_type": lambda f: ["inspect", f["unknown-type"]],
    "quantize into its input": lambda f: ["quantize", f["enc"], "--scheme", "int8", "--out", f["enc"] / "sub"],
    "quantize onto its input": lambda f: ["quantize", f["enc"], "--scheme", "int8", "--out", f["enc"]],
    "factorize ratio 0": lambda f: ["factorize", f["enc"], "--method", "svd", "--ratio", "0", "--out", f["d"] / "o5"],
    "factorize ratio 1.5": lambda f: ["factorize", f["enc"], "--method", "svd", "--ratio", "1.5", "--out",
                                      f["d"] / "o5"],
    "factorize rank above the layer": lambda f: ["factorize", f["enc"], "--method", "svd", "--rank", "40", "--out",
                                                 f["d"] / "o5"],
    "factorize rank that saves nothing": lambda f: ["factorize", f["enc"], "--method", "svd", "--rank", "20",
                                                    "--out", f["d"] / "o5"],
    "share layers of different shapes": lambda f: ["factorize", f["uneven"], "--method", "share_layers", "--out",
                                                   f["d"] / "o5"],
    "unknown tracker": lambda f: ["distill", "--teacher", f["enc"], "--keep-layers", "0", "--unlabeled",
                                  f["d"] / "sents.txt", "--log-with", "neptune", "--out", f["d"] / "o6"],
    "report of a file that is not a result": lambda f: ["report", f["d"] / "stsb.csv", "--out", f["d"] / "r.html"],
    "embedding rank that saves nothing": lambda f: ["factorize", f["enc"], "--method", "svd", "--embedding-rank",
                                                    "500", "--out", f["d"] / "o5"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_exit_2(files, case):
    argv = [str(x) for x in CASES[case](files)]
    before = snapshot(files["d"])
    env = {**os.environ, "TQDM_DISABLE": "1"}
    r = subprocess.run([sys.executable, "-m", "slimformer.cli", *argv], capture_output=True, text=True, env=env,
                       timeout=300)
    err = r.stderr.strip()
    assert r.returncode == 2, f"exit {r.returncode}: {err[-1500:]}"
    assert "Traceback" not in err and len(err.splitlines()) == 1, err[-1500:]
    assert err.startswith("slimformer: error:") or err.startswith("usage:") is False
    assert snapshot(files["d"]) == before, "the user's files changed"


def test_a_long_csv_field_is_data_not_an_error(files, capsys):
    from slimformer.cli import main

    assert main(["evaluate", str(files["enc"]), "--task", "stsb", "--data", str(files["d"] / "big.csv"),
                 "--no-efficiency"]) == 0
    assert "spearman" in capsys.readouterr().out


def test_distill_with_task_and_data(files, capsys):
    from slimformer.cli import main

    out = files["d"] / "distilled"
    assert main(["distill", "--teacher", str(files["enc"]), "--keep-layers", "0", "--unlabeled",
                 str(files["d"] / "sents.txt"), "--task", "stsb", "--data", str(files["d"] / "stsb.csv"),
                 "--max-steps", "2", "--batch-size", "8", "--out", str(out)]) == 0
    r = json.loads((out / "result.json").read_text())
    assert "spearman" in r["baseline"]["metrics"] and "spearman" in r["compressed"]["metrics"]


def test_factorize_command_writes_a_reloadable_model(files, capsys):
    from slimformer.cli import main

    out = files["d"] / "factorized"
    assert main(["factorize", str(files["enc"]), "--method", "svd_llm", "--ratio", "0.7", "--allocation", "spectrum",
                 "--embedding-rank", "8", "--data", str(files["d"] / "sents.txt"), "--out", str(out)]) == 0
    r = json.loads((out / "result.json").read_text())
    assert [s["method"] for s in r["steps"]] == ["svd_llm", "factorize_embedding"]
    assert r["steps"][0]["details"]["kept"] <= 0.7
    assert sf.load(out).num_params() == r["steps"][-1]["params_after"] < r["steps"][0]["params_before"]
