"""The one trainer: distillation, fine-tuning, training-time pruning and the reference Transformer
all train through it.

    trainer = Trainer(module, loss_fn, examples, collate, TrainConfig(epochs=2), out_dir="out/run")
    result = trainer.fit()          # resumes from out/run/checkpoints if a previous run was cut off

Built on Hugging Face `accelerate`: `accelerate launch` or `torchrun` runs the same code
data-parallel (each process takes its share of every global batch; gradients are averaged over
processes after each backward, as DDP does, so 2 processes on a global batch give what 1 process
gives on it); with `TrainConfig.distributed="fsdp"` the module's parameters, gradients and
optimizer state are sharded over the processes instead (FSDP2, train/fsdp.py). The module is not
wrapped (the loss closes over it). AdamW, warmup then linear / cosine
decay, gradient accumulation, clipping, bf16 autocast where asked, evaluation every N steps keeping
the best weights, checkpoints every N steps (atomic; a killed run resumes from the last one and
ends with the weights an uninterrupted run ends with), a progress bar with loss and rate, metrics
as JSON lines (and TensorBoard when installed), callbacks (pruning masks and schedules).

`loss_fn(batch) -> loss tensor` or `(loss, {name: float})`; it closes over the modules it uses.
`examples` is a sequence; each epoch visits a permutation seeded by (seed, epoch), cut into global
batches of `batch_size` that `collate(list of examples) -> batch` turns into tensors.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..core.errors import ConfigError, SlimformerError
from ..core.hardware import resolve_precision
from .fsdp import Sharded, accelerate_without_fsdp, wants_fsdp

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
CALLBACKS_FILE = "callbacks.pt"  # the state of callbacks that have one (pruning masks and scores)
MODULE_STATE = "custom_checkpoint_0.pkl"  # accelerate's file for the first registered object: the module
FSDP_OPTIMIZER_STATE = "optimizer_full.pt"  # FSDP runs: the optimizer state gathered to full tensors


@dataclass(frozen=True)
class TrainConfig:
    """epochs (may be fractional) or max_steps (> 0 wins): how long. batch_size: examples per
    optimizer step over all processes (x grad_accum micro-batches of batch_size / grad_accum).
    lr, weight_decay: AdamW. warmup: fraction of the steps with a linear warm-up (warmup_steps > 0:
    that many steps instead); schedule: linear, inverse_sqrt (Vaswani et al.),
    cosine or constant decay after it. clip_norm: gradient norm clipping (0: off).
    eval_every: evaluate every N steps (0: once per epoch, and at the end). save_every: checkpoint
    every N steps (0: only at the end of each epoch). keep: checkpoints kept. mixed_precision: "no",
    "bf16" (autocast), "fp16" (GPU, with a gradient scaler) or "auto" (bf16 where the device runs it
    natively: CUDA GPUs with bf16, CPUs with AMX-BF16 or AVX512-BF16; else "no"; on a 2-core AMX
    Xeon a MiniLM distillation step ran 1.7x faster with the same loss curve). log_every: steps
    between log lines. distributed (under torchrun / accelerate launch with several processes):
    "ddp" (each process holds the whole module; gradients averaged), "fsdp" (parameters, gradients
    and optimizer state sharded over the processes, train/fsdp.py) or "auto" (FSDP when accelerate
    was launched with an FSDP config, else DDP); one process ignores it."""

    epochs: float = 1.0
    max_steps: int = 0
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup: float = 0.1
    warmup_steps: int = 0
    schedule: str = "linear"
    clip_norm: float = 1.0
    eval_every: int = 0
    save_every: int = 500
    keep: int = 2
    seed: int = 0
    mixed_precision: str = "no"
    log_every: int = 20
    distributed: str = "auto"

    def __post_init__(self) -> None:
        def bad(name, accepted):
            raise ConfigError(f"TrainConfig.{name}={getattr(self, name)!r} is not accepted; accepted: {accepted}")

        if not (isinstance(self.epochs, (int, float)) and self.epochs > 0) and self.max_steps <= 0:
            bad("epochs", "a number > 0 (or max_steps > 0)")
        for name in ("max_steps", "eval_every", "save_every", "log_every", "warmup_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                bad(name, "an integer >= 0")
        for name in ("batch_size", "grad_accum", "keep"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                bad(name, "an integer >= 1")
        if self.batch_size % self.grad_accum:
            bad("grad_accum", f"a divisor of batch_size={self.batch_size}")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < 1):
            bad("lr", "a number in (0, 1)")
        if not 0 <= self.warmup < 1:
            bad("warmup", "a fraction in [0, 1)")
        if self.schedule not in ("linear", "cosine", "constant", "inverse_sqrt"):
            bad("schedule", "linear, cosine, constant, inverse_sqrt")
        if self.mixed_precision not in ("no", "bf16", "fp16", "auto"):
            bad("mixed_precision", "no, bf16, fp16, auto")
        if self.distributed not in ("auto", "ddp", "fsdp"):
            bad("distributed", "auto (FSDP when accelerate was launched with it, else DDP), ddp, fsdp")
        if self.clip_norm < 0 or self.weight_decay < 0:
            bad("clip_norm" if self.clip_norm < 0 else "weight_decay", "a number >= 0")


@dataclass
class TrainResult:
    steps: int
    epochs: float
    seconds: float
    final_loss: float | None
    best: dict | None = None
    history: list = field(default_factory=list)
    resumed_from: int = 0
    precision: str = "no"

    def to_dict(self) -> dict:
        return asdict(self)


@contextlib.contextmanager
def frozen(*modules: nn.Module):
    """Inside: every parameter of `modules` has requires_grad False (a teacher); afterwards each
    gets its own flag back, so a model copied from the teacher later still trains."""
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


class Callback:
    """Hooks into training: on_before_optimizer_step after the gradients of a step are complete
    (e.g. accumulate movement scores, add a sparsity penalty's gradient), on_step_end after each
    optimizer step (e.g. re-apply pruning masks, update a sparsity schedule), on_train_end once."""

    def on_before_optimizer_step(self, trainer: "Trainer", step: int) -> None:
        pass

    def on_step_end(self, trainer: "Trainer", step: int) -> None:
        pass

    def on_train_end(self, trainer: "Trainer") -> None:
        pass

    def on_log(self, trainer: "Trainer", record: dict) -> None:
        """Each logged record ({"step", "loss", "lr", ...; eval/... after an evaluation})."""

    # a callback whose writes_tensorboard is True writes the TensorBoard files itself (the trainer
    # then does not: one writer)
    # a callback with state (masks, scores) also defines state_dict() / load_state_dict(state):
    # checkpoints keep it, so a resumed run continues with the same masks


def lr_lambda(schedule: str, warmup_steps: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        if schedule == "inverse_sqrt":  # Vaswani et al.: peak at the end of warm-up, then 1/sqrt(step)
            return math.sqrt(max(warmup_steps, 1) / (step + 1))
        p = min(1.0, (step - warmup_steps) / max(1, total - warmup_steps))
        return 0.5 * (1 + math.cos(math.pi * p)) if schedule == "cosine" else 1.0 - p
    return f


class Trainer:
    def __init__(self, module: nn.Module, loss_fn: Callable, examples: Sequence, collate: Callable,
                 config: TrainConfig, out_dir=None, eval_fn: Callable | None = None,
                 callbacks: Sequence[Callback] = ()):
        """module: every trainable parameter (the student and e.g. loss projections, in one
        nn.Module or ModuleDict). eval_fn(module) -> {name: value, "score": higher is better}."""
        from accelerate import Accelerator

        if len(examples) == 0:
            raise SlimformerError("the trainer got no training examples")
        self.config = config
        self.examples = examples
        self.collate = collate
        self.loss_fn = loss_fn
        self.eval_fn = eval_fn
        self.callbacks = list(callbacks)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.precision = resolve_precision(config.mixed_precision, device)
        # bf16 is plain autocast (below); accelerate's own mixed-precision state is process-wide and
        # cannot change between trainers in one process, so it is used only for fp16's scaler
        with accelerate_without_fsdp():  # FSDP, where asked, is applied by the trainer (train/fsdp.py)
            self.accelerator = Accelerator(mixed_precision="fp16" if self.precision == "fp16" else "no",
                                           cpu=device == "cpu")
        world = self.accelerator.num_processes
        if config.batch_size % (world * config.grad_accum):
            raise ConfigError(f"TrainConfig.batch_size={config.batch_size} must split evenly over {world} processes "
                              f"x grad_accum={config.grad_accum}")
        self.steps_per_epoch = max(1, len(examples) // config.batch_size)
        self.total_steps = config.max_steps or max(1, int(round(config.epochs * self.steps_per_epoch)))
        if not any(p.requires_grad for p in module.parameters()):
            raise ConfigError("the trainer got a model with no trainable parameters (every requires_grad is False; "
                              "was it copied from a frozen teacher?)")
        self.fingerprint = self._fingerprint(module)
        self.raw_module = module
        self.module = module.to(self.accelerator.device)
        self.sharded = None  # FSDP: the module's parameters sharded in place over the processes
        if world > 1 and wants_fsdp(config.distributed):
            self.sharded = Sharded(module, self.accelerator.device)
        params = [p for p in module.parameters() if p.requires_grad]  # (sharded ones under FSDP)
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
        warm = config.warmup_steps or int(round(config.warmup * self.total_steps))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(config.schedule, warm, self.total_steps))
        # the module is not wrapped (loss_fn closes over it): gradients are averaged over processes
        # after each backward (data parallel, as DDP does; FSDP reduce-scatters them itself); optimizer,
        # scheduler and the module are registered so checkpoints hold them and the RNG states
        # (the scheduler is not prepared: accelerate would step it once per process per step). Under
        # FSDP the module and optimizer states are gathered and saved by the trainer (full tensors)
        self.scheduler = sched
        if self.sharded is None:
            self.optimizer = self.accelerator.prepare(opt)
            self.accelerator.register_for_checkpointing(module, sched)
        else:
            self.optimizer = opt
            self.accelerator.register_for_checkpointing(_Placeholder(), sched)  # index 0: MODULE_STATE is ours
        self._params = params
        self.step = 0
        self.best: dict | None = None
        self.history: list[dict] = []

    # ------------------------------------------------------------------ data

    def _batch_indices(self, step: int) -> list[int]:
        """The global batch of optimizer step `step` (deterministic: seed, epoch, position)."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        g = torch.Generator().manual_seed(self.config.seed * 100003 + epoch)
        perm = torch.randperm(len(self.examples), generator=g)
        b = self.config.batch_size
        return perm[pos * b:(pos + 1) * b].tolist()

    def _micro_batches(self, step: int):
        idx = self._batch_indices(step)
        acc = self.accelerator
        mine = idx[acc.process_index::acc.num_processes]  # this process's share of the global batch
        n = self.config.grad_accum
        size = len(mine) // n
        for i in range(n):
            yield self._to_device(self.collate([self.examples[j] for j in mine[i * size:(i + 1) * size]]))

    def _to_device(self, batch):
        dev = self.accelerator.device
        if isinstance(batch, dict):
            return {k: self._to_device(v) for k, v in batch.items()}
        if isinstance(batch, (list, tuple)):
            return type(batch)(self._to_device(v) for v in batch)
        return batch.to(dev) if isinstance(batch, torch.Tensor) else batch

    # ------------------------------------------------------------------ checkpoints

    def _fingerprint(self, module: nn.Module) -> str:
        shapes = [(n, tuple(p.shape)) for n, p in module.named_parameters()]
        # settings left at their defaults are not part of it, so a field added in a later version
        # (at its default) does not orphan the checkpoints of runs started before
        defaults = asdict(TrainConfig())
        cfg = {k: v for k, v in asdict(self.config).items()
               if k not in ("eval_every", "save_every", "keep", "log_every") and v != defaults.get(k)}
        text = json.dumps({"shapes": shapes, "config": cfg, "examples": len(self.examples)}, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def _ckpt_root(self) -> Path | None:
        return self.out_dir / CHECKPOINTS if self.out_dir is not None else None

    def _checkpoints(self) -> list[Path]:
        """Completed checkpoints, oldest first."""
        root = self._ckpt_root()
        if root is None or not root.exists():
            return []
        return sorted((p for p in root.glob("step-*") if (p / STATE_FILE).exists()),
                      key=lambda p: int(p.name.split("-")[1]))

    def latest_checkpoint(self) -> Path | None:
        done = self._checkpoints()
        return done[-1] if done else None

    def save_checkpoint(self) -> Path | None:
        root = self._ckpt_root()
        if root is None:
            return None
        acc = self.accelerator
        final = root / f"step-{self.step}"
        tmp = root / f".tmp-step-{self.step}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            root.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp), safe_serialization=False)
        if self.sharded is not None:  # every process takes part in gathering; rank 0 writes
            module_state = self.sharded.full_state_dict()
            optimizer_state = self.sharded.optimizer_state_dict(self.optimizer)
            if acc.is_main_process:
                torch.save(module_state, tmp / MODULE_STATE)
                torch.save(optimizer_state, tmp / FSDP_OPTIMIZER_STATE)
        if acc.is_main_process:
            state = {"step": self.step, "best": self.best, "history": self.history, "fingerprint": self.fingerprint}
            cb_state = {i: cb.state_dict() for i, cb in enumerate(self.callbacks) if hasattr(cb, "state_dict")}
            if cb_state:
                torch.save(cb_state, tmp / CALLBACKS_FILE)
            (tmp / STATE_FILE).write_text(json.dumps(state, default=str))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            old = sorted(root.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[:-self.config.keep]
            for p in old:
                shutil.rmtree(p, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def load_checkpoint(self, path: Path) -> None:
        state = json.loads((path / STATE_FILE).read_text())
        if state.get("fingerprint") != self.fingerprint:
            raise SlimformerError(f"{path}: a checkpoint of another run (different model, data size or training "
                                  "settings); use a new output folder, or delete its checkpoints folder to start over")
        self.accelerator.load_state(str(path))
        if self.sharded is not None:
            main = self.accelerator.is_main_process
            if main and not (path / FSDP_OPTIMIZER_STATE).exists():
                raise SlimformerError(f"{path}: a checkpoint of a DDP run; resume it with distributed='ddp'")
            self.sharded.load(torch.load(path / MODULE_STATE, map_location="cpu") if main else {}, self.optimizer,
                              torch.load(path / FSDP_OPTIMIZER_STATE, map_location="cpu", weights_only=False) if main else {})
        if (path / CALLBACKS_FILE).exists():
            for i, st in torch.load(path / CALLBACKS_FILE, weights_only=False).items():
                if int(i) < len(self.callbacks) and hasattr(self.callbacks[int(i)], "load_state_dict"):
                    self.callbacks[int(i)].load_state_dict(st)
        self.step = int(state["step"])
        self.best = state.get("best")
        self.history = state.get("history", [])

    # ------------------------------------------------------------------ loop

    def _evaluate(self) -> dict | None:
        if self.eval_fn is None:
            return None
        self.module.eval()
        with torch.no_grad():
            res = dict(self.eval_fn(self.raw_module))
        self.module.train()
        res["step"] = self.step
        self.history.append({"eval": res})
        if "score" in res and (self.best is None or res["score"] > self.best["score"]):
            self.best = res
            state = self.sharded.full_state_dict() if self.sharded is not None else None  # all processes gather
            if self.out_dir is not None and self.accelerator.is_main_process:
                best = self.out_dir / "best.pt"
                torch.save(state if state is not None else self.module.state_dict(), str(best) + ".tmp")
                os.replace(str(best) + ".tmp", best)
        return res

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.accelerator.device.type, dtype=torch.bfloat16)
        return self.accelerator.autocast()

    def fit(self) -> TrainResult:
        cfg, acc = self.config, self.accelerator
        resumed = 0
        ck = self.latest_checkpoint()
        if ck is not None:
            self.load_checkpoint(ck)
            resumed = self.step
        else:
            torch.manual_seed(cfg.seed)
            random.seed(cfg.seed)
        logger = _Logger(self.out_dir, acc.is_main_process,
                         tensorboard=not any(getattr(cb, "writes_tensorboard", False) for cb in self.callbacks),
                         on_log=self._on_log)
        self.module.train()
        t0 = time.perf_counter()
        last = None
        bar = tqdm(total=self.total_steps, initial=self.step, desc="training", leave=False,
                   disable=not acc.is_main_process or bool(os.environ.get("TQDM_DISABLE")))
        try:
            while self.step < self.total_steps:
                logs: dict = {}
                total = 0.0
                for batch in self._micro_batches(self.step):
                    with self._autocast():
                        out = self.loss_fn(batch)
                    loss, parts = (out if isinstance(out, tuple) else (out, {}))
                    acc.backward(loss / cfg.grad_accum)
                    total += float(loss.detach()) / cfg.grad_accum
                    for k, v in parts.items():
                        logs[k] = logs.get(k, 0.0) + float(v) / cfg.grad_accum
                if acc.num_processes > 1:  # FSDP reduce-scatters its units' gradients; the rest are averaged here
                    for p in (self._params if self.sharded is None else self.sharded.replicated):
                        if p.grad is not None:
                            p.grad = acc.reduce(p.grad, reduction="mean")
                for cb in self.callbacks:
                    cb.on_before_optimizer_step(self, self.step + 1)
                if cfg.clip_norm:
                    torch.nn.utils.clip_grad_norm_(self._params, cfg.clip_norm)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                last = total
                for cb in self.callbacks:
                    cb.on_step_end(self, self.step)
                bar.update(1)
                bar.set_postfix(loss=f"{total:.4f}")
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    rec = {"step": self.step, "loss": total, "lr": self.scheduler.get_last_lr()[0], **logs}
                    self.history.append(rec)
                    logger.log(rec)
                end_of_epoch = self.step % self.steps_per_epoch == 0
                if (cfg.eval_every and self.step % cfg.eval_every == 0) or \
                        (not cfg.eval_every and end_of_epoch) or self.step == self.total_steps:
                    ev = self._evaluate()
                    if ev is not None:
                        logger.log({"step": self.step, **{f"eval/{k}": v for k, v in ev.items() if k != "step"}})
                if (cfg.save_every and self.step % cfg.save_every == 0) or end_of_epoch or self.step == self.total_steps:
                    self.save_checkpoint()
        finally:
            bar.close()
            logger.close()
        if self.sharded is not None:  # full, plain parameters back on every process
            self.sharded.release()
            self.sharded = None
        for cb in self.callbacks:
            cb.on_train_end(self)
        return TrainResult(self.step, self.step / self.steps_per_epoch, time.perf_counter() - t0, last, self.best,
                           self.history, resumed, self.precision)

    def average_checkpoints(self, last: int) -> dict | None:
        """The element-wise mean of the module weights in the last `last` checkpoints (checkpoint
        averaging, Vaswani et al.: smoother than the final weights), or None without checkpoints."""
        done = self._checkpoints()[-last:]
        if not done:
            return None
        avg = None
        for p in done:
            sd = torch.load(p / MODULE_STATE, map_location="cpu")
            if avg is None:
                avg = {k: v.clone().double() if v.is_floating_point() else v.clone() for k, v in sd.items()}
            else:
                for k, v in sd.items():
                    if v.is_floating_point():
                        avg[k] += v.double()
        return {k: (v / len(done)).to(torch.float32) if v.is_floating_point() else v for k, v in avg.items()}

    def _on_log(self, rec: dict) -> None:
        for cb in self.callbacks:
            cb.on_log(self, rec)

    def load_best(self) -> bool:
        """Put the best evaluated weights back into the module (if any were kept)."""
        if self.out_dir is None or not (self.out_dir / "best.pt").exists():
            return False
        self.module.load_state_dict(torch.load(self.out_dir / "best.pt"))
        return True


class _Placeholder:
    """Holds accelerate's first checkpoint slot under FSDP, where the trainer writes the module's
    gathered state itself (accelerate would save rank 0's shard only)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state) -> None:
        pass


class _Logger:
    """metrics.jsonl in the output folder, plus TensorBoard event files when tensorboard is installed
    (unless a tracker callback writes them); every record also goes to the callbacks' on_log."""

    def __init__(self, out_dir: Path | None, main: bool, tensorboard: bool = True, on_log=None):
        self.file = self.tb = None
        self.on_log = on_log if main else None
        if out_dir is None or not main:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        self.file = open(out_dir / "metrics.jsonl", "a")
        if not tensorboard:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tensorboard"))
        except Exception:  # tensorboard is optional
            self.tb = None

    def log(self, rec: dict) -> None:
        if self.file is not None:
            self.file.write(json.dumps(rec, default=str) + "\n")
            self.file.flush()
        if self.tb is not None:
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, rec["step"])
        if self.on_log is not None:
            self.on_log(rec)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()
