"""The shared trainer: schedules, resume after an interruption (same final weights), a checkpoint
of another run refused, and 2 processes (gloo, CPU) matching 1 process on the same global batch."""
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from slimformer.core.errors import ConfigError, SlimformerError
from slimformer.train import Callback, TrainConfig, Trainer
from slimformer.train.trainer import lr_lambda


def _data(n=96):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    y = x @ torch.randn(6, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)
    return [(x[i], y[i]) for i in range(n)]


def _model():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))


def _collate(items):
    return torch.stack([a for a, _ in items]), torch.stack([b for _, b in items])


def _trainer(model, out, cfg, callbacks=()):
    def loss_fn(batch):
        x, y = batch
        return nn.functional.mse_loss(model(x), y)
    return Trainer(model, loss_fn, _data(), _collate, cfg, out_dir=out, callbacks=callbacks)


class _Die(Callback):
    def __init__(self, at):
        self.at = at

    def on_step_end(self, trainer, step):
        if step == self.at:
            raise KeyboardInterrupt  # as if the process were killed right after this step


def test_resume_after_interruption_ends_with_the_same_weights(tmp_path):
    cfg = TrainConfig(max_steps=20, batch_size=16, lr=1e-2, save_every=5, warmup=0.2, log_every=1)
    ref = _model()
    r = _trainer(ref, tmp_path / "a", cfg).fit()
    assert r.steps == 20 and r.final_loss < r.history[0]["loss"]
    cut = _model()
    with pytest.raises(KeyboardInterrupt):
        _trainer(cut, tmp_path / "b", cfg, [_Die(12)]).fit()  # checkpoint at 10 survives
    again = _model()  # a fresh process: new model object, same init
    res = _trainer(again, tmp_path / "b", cfg).fit()
    assert res.resumed_from == 10 and res.steps == 20
    for p, q in zip(ref.parameters(), again.parameters()):
        assert torch.equal(p, q)
    assert len(list((tmp_path / "b" / "checkpoints").glob("step-*"))) == cfg.keep


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    _trainer(_model(), tmp_path / "a", TrainConfig(max_steps=4, batch_size=16, save_every=2)).fit()
    with pytest.raises(SlimformerError, match="a checkpoint of another run"):
        _trainer(_model(), tmp_path / "a", TrainConfig(max_steps=4, batch_size=16, lr=1e-3, save_every=2)).fit()


def test_schedules_and_bad_configs():
    f = lr_lambda("linear", 2, 10)
    assert [round(f(s), 3) for s in (0, 1, 2, 6, 10)] == [0.5, 1.0, 1.0, 0.5, 0.0]
    c = lr_lambda("cosine", 0, 10)
    assert c(0) == pytest.approx(1.0) and c(5) == pytest.approx(0.5) and c(10) == pytest.approx(0.0)
    with pytest.raises(ConfigError, match="grad_accum=3"):
        TrainConfig(batch_size=32, grad_accum=3)
    with pytest.raises(ConfigError, match="schedule='step'"):
        TrainConfig(schedule="step")


SCRIPT = textwrap.dedent("""
    import sys, torch
    from torch import nn
    sys.path.insert(0, {tests!r})
    from test_trainer import _data, _collate, _model
    from slimformer.train import TrainConfig, Trainer
    model = _model()
    model[2].p = 0.0  # no dropout: compare processes exactly
    def loss_fn(batch):
        x, y = batch
        return nn.functional.mse_loss(model(x), y)
    t = Trainer(model, loss_fn, _data(), _collate, TrainConfig(max_steps=6, batch_size=16, lr=1e-2, warmup=0.0))
    t.fit()
    w = torch.cat([p.detach().flatten() for p in model.parameters()])
    torch.save(w, sys.argv[1] + f"-{{t.accelerator.process_index}}.pt")
    if torch.distributed.is_initialized():  # a clean gloo teardown (else its threads may abort the exit)
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
""")


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    import os

    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(tests=os.path.dirname(__file__)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one")], capture_output=True, text=True, env=env)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          _free_port(), str(script), str(tmp_path / "two")], capture_output=True, text=True, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    w1 = torch.load(tmp_path / "one-0.pt")
    a, b = torch.load(tmp_path / "two-0.pt"), torch.load(tmp_path / "two-1.pt")
    assert torch.equal(a, b)  # replicas identical
    torch.testing.assert_close(a, w1, rtol=1e-5, atol=1e-6)  # = 1 process on the same global batch


FSDP_SCRIPT = textwrap.dedent("""
    import os, sys, torch
    from torch import nn
    sys.path.insert(0, {tests!r})
    from test_trainer import _data, _collate
    from slimformer.train import TrainConfig, Trainer

    class Net(nn.Module):  # layers in a ModuleList (one FSDP unit each) and a weight tied across units
        def __init__(self):
            super().__init__()
            torch.manual_seed(1)
            self.inp = nn.Linear(6, 16)
            self.layers = nn.ModuleList(nn.Linear(16, 16) for _ in range(2))
            self.out = nn.Linear(16, 1)
        def forward(self, x):
            h = torch.relu(self.inp(x))
            for l in self.layers:
                h = h + torch.tanh(l(h))
            return self.out(h)

    model = Net()
    seen = []
    def loss_fn(batch):
        x, y = batch
        seen.append(type(model.layers[0].weight).__name__)
        if os.environ.get("DIE_AT") and len(seen) == int(os.environ["DIE_AT"]):
            raise SystemExit(3)
        return nn.functional.mse_loss(model(x), y)
    out = sys.argv[3] if len(sys.argv) > 3 else None
    t = Trainer(model, loss_fn, _data(), _collate, TrainConfig(max_steps=6, batch_size=16, lr=1e-2, warmup=0.0,
                save_every=2, distributed=sys.argv[2]), out_dir=out)
    t.fit()
    assert type(model).__name__ == "Net" and all(type(p) is nn.Parameter for p in model.parameters())
    w = torch.cat([p.detach().flatten() for p in model.parameters()])
    torch.save({{"w": w, "seen": seen, "out": model(torch.ones(2, 6)).detach()}},
               sys.argv[1] + f"-{{t.accelerator.process_index}}.pt")
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
""")


@pytest.mark.slow
def test_fsdp_on_two_processes_matches_one_process_and_resumes(tmp_path):
    """FSDP (gloo, CPU): parameters sharded while training, plain full ones after on every process,
    the same weights as one process on the same global batch; killed, it resumes from its gathered
    checkpoint to the weights of an uninterrupted run."""
    import os

    script = tmp_path / "run.py"
    script.write_text(FSDP_SCRIPT.format(tests=os.path.dirname(__file__)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}

    def two(name, *extra, **more):
        return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                               _free_port(), str(script), str(tmp_path / name), "fsdp", *extra],
                              capture_output=True, text=True, env={**env, **more})

    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one"), "fsdp"], capture_output=True, text=True,
                         env=env)
    assert one.returncode == 0, one.stderr[-2000:]
    r = two("two")
    assert r.returncode == 0, r.stderr[-3000:]
    w1, a, b = (torch.load(tmp_path / f) for f in ("one-0.pt", "two-0.pt", "two-1.pt"))
    assert set(a["seen"]) == {"DTensor"} and set(w1["seen"]) == {"Parameter"}  # sharded only with 2 processes
    assert torch.equal(a["w"], b["w"]) and torch.equal(a["out"], b["out"])  # full weights on both after
    torch.testing.assert_close(a["w"], w1["w"], rtol=1e-5, atol=1e-6)
    died = two("died", str(tmp_path / "ck"), DIE_AT="5")  # after the step-4 checkpoint
    assert died.returncode != 0
    r = two("resumed", str(tmp_path / "ck"))
    assert r.returncode == 0, r.stderr[-3000:]
    c = torch.load(tmp_path / "resumed-0.pt")
    assert len(c["seen"]) == 2  # steps 5 and 6 only
    torch.testing.assert_close(c["w"], a["w"], rtol=1e-5, atol=1e-6)
    # distributed="auto" under `accelerate launch --use_fsdp` (what an FSDP config file sets) shards too
    r = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--use_fsdp",
                        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
                        _free_port(), str(script), str(tmp_path / "acc"), "auto"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    d = torch.load(tmp_path / "acc-0.pt")
    assert set(d["seen"]) == {"DTensor"}
    torch.testing.assert_close(d["w"], a["w"], rtol=1e-5, atol=1e-6)


def test_bf16_autocast_trains_and_auto_follows_the_cpu(monkeypatch):
    from slimformer.core import hardware

    seen = []

    def loss_fn(batch):
        x, y = batch
        out = model(x)
        seen.append(out.dtype)
        return nn.functional.mse_loss(out.float(), y)

    model = _model()
    res = Trainer(model, loss_fn, _data(), _collate, TrainConfig(max_steps=6, batch_size=16, lr=1e-2,
                                                                 mixed_precision="bf16")).fit()
    assert res.precision == "bf16" and seen[0] == torch.bfloat16 and res.final_loss < res.history[0]["loss"] * 2
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx2"})
    assert hardware.resolve_precision("auto") == "no"
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx2", "amx_bf16"})
    assert hardware.resolve_precision("auto") == "bf16"
    assert hardware.resolve_precision("no") == "no"
    with pytest.raises(ConfigError, match="mixed_precision='fp8'.*no, bf16, fp16, auto"):
        TrainConfig(mixed_precision="fp8")


@pytest.mark.slow
@pytest.mark.parametrize("distributed", ["ddp", "fsdp"])
def test_distill_command_under_torchrun_shares_one_work_folder(tmp_path, distributed):
    """Two processes run the distill command (a compress run): one output, written once, and the
    shared work folder removed once every process is done with it; with FSDP too (a Hugging Face
    student sharded layer by layer, saved whole)."""
    import os

    import slimformer as sf
    from slimformer.testing import tiny_slim

    sf.save(tiny_slim("bert", "embedding", num_hidden_layers=3), tmp_path / "m")
    (tmp_path / "s.txt").write_text("\n".join(sf.sample_sentences()[:64]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          _free_port(), "-m", "slimformer.cli", "distill", "--teacher", str(tmp_path / "m"), "--keep-layers",
                          "0,1", "--unlabeled", str(tmp_path / "s.txt"), "--max-steps", "4", "--batch-size", "16", "--out",
                          str(tmp_path / "d"), "--distributed", distributed], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(sf.load(tmp_path / "d").model.encoder.layer) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "m", "s.txt"]  # no work folder left


def _free_port() -> str:
    """A port no one listens on now (fixed ports collide with other runs on a shared machine)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])
