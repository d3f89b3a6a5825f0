"""Distillation and fine-tuning configs."""
from __future__ import annotations

from dataclasses import dataclass

from ..core.config import MethodConfig
from ..core.errors import ConfigError

PRECISIONS = ("auto", "bf16", "fp16", "no")
DISTRIBUTED = ("auto", "ddp", "fsdp")


@dataclass(frozen=True)
class DistillConfig(MethodConfig):
    """Train the model (the student) to match a teacher on unlabeled (or labeled) texts.

    losses / weights: names from `slimformer.distill.LOSSES` and their weights (default by model
    kind: embedding models "embedding_cosine"; classifiers "kd"; LMs "soft"). lr: None = by kind
    (5e-4 for embedding models: on MiniLM -> 3 layers, 400 steps reached STS-B 82.6 at 5e-4 with
    the cosine loss against 78.8 at 1e-4 with MSE). epochs 2 by default: that 3-layer student
    reached 85.51 after 1 epoch and 85.88 after 2 (teacher 86.72). temperature, beta: the
    soft loss's temperature and the hard-label weight of "kd". layer_map: "uniform" | "last" for
    hidden / attention / relation losses. teacher: "" = the model as it was before the recipe ran
    (a recipe that prunes, then recovers), or a model path / hub id / "default". unlabeled: a text
    file (one sentence a line) to train on; "" = the step's data. epochs / max_steps, lr,
    batch_size, max_length: training (the shared trainer, train.TrainConfig). mixed_precision:
    "auto" (bf16 autocast where the device runs bf16 natively), "bf16", "fp16" (GPU) or "no".
    distributed: under torchrun / accelerate launch with several processes, "ddp" (each process
    holds the student), "fsdp" (its parameters, gradients and optimizer state sharded over the
    processes) or "auto" (FSDP when accelerate was launched with an FSDP config, else DDP).
    keep_best: inside a recipe, measure the run's evaluation task after each epoch and keep the best
    weights (the CLI's `distill --data`); off by default, so a recipe's figures are not picked on
    the data they are reported on."""

    method = "distill"
    losses: tuple[str, ...] = ()
    weights: tuple[float, ...] = ()
    temperature: float = 2.0
    beta: float = 0.5
    layer_map: str = "uniform"
    teacher: str = ""
    unlabeled: str = ""
    epochs: float = 2.0
    max_steps: int = 0
    lr: float | None = None
    batch_size: int = 64
    max_length: int = 128
    seed: int = 0
    mixed_precision: str = "auto"
    keep_best: bool = False
    distributed: str = "auto"

    def validate(self) -> None:
        from .losses import LOSSES

        self._check_bool("keep_best")
        self._check_choice("mixed_precision", PRECISIONS)
        self._check_choice("distributed", DISTRIBUTED)
        for name in self.losses:
            LOSSES.get(name)  # a clear error listing the accepted names
        if self.weights and len(self.weights) != len(self.losses):
            raise ConfigError(f"DistillConfig.weights has {len(self.weights)} values for {len(self.losses)} losses")
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise ConfigError(f"DistillConfig.temperature={self.temperature!r}; accepted: a number > 0")
        self._check_range("beta", 0.0, 1.0)
        self._check_choice("layer_map", ("uniform", "last"))
        if not (self.epochs > 0 or self.max_steps > 0):
            raise ConfigError("DistillConfig: epochs or max_steps must be > 0")
        self._check_range("max_steps", 0, 10**9)
        if self.lr is not None:
            self._check_range("lr", 0.0, 1.0, lo_open=True, hi_open=True)
        self._check_range("batch_size", 1, 65536)
        self._check_range("max_length", 8, 8192)

    def learning_rate(self, kind: str) -> float:
        return self.lr if self.lr is not None else (5e-4 if kind == "embedding" else 1e-4)

    def loss_weights(self, kind: str) -> list[tuple[str, float]]:
        losses = self.losses or {"embedding": ("embedding_cosine",), "classification": ("kd",)}.get(kind, ("soft",))
        weights = self.weights or (1.0,) * len(losses)
        return list(zip(losses, weights))


@dataclass(frozen=True)
class FinetuneConfig(MethodConfig):
    """Fine-tune a model on a labeled task with the shared trainer: classification (cross-entropy;
    an encoder gets a classification head) or stsb (sentence embeddings trained so that the
    cosine of a pair matches score / 5, sentence-transformers' CosineSimilarityLoss). mixed_precision,
    distributed: as DistillConfig's."""

    method = "finetune"
    epochs: float = 3.0
    max_steps: int = 0
    lr: float = 5e-5
    batch_size: int = 32
    max_length: int = 128
    warmup: float = 0.1
    seed: int = 0
    mixed_precision: str = "auto"
    distributed: str = "auto"

    def validate(self) -> None:
        self._check_choice("mixed_precision", PRECISIONS)
        self._check_choice("distributed", DISTRIBUTED)
        if not (self.epochs > 0 or self.max_steps > 0):
            raise ConfigError("FinetuneConfig: epochs or max_steps must be > 0")
        self._check_range("lr", 0.0, 1.0, lo_open=True, hi_open=True)
        self._check_range("batch_size", 1, 65536)
        self._check_range("max_length", 8, 8192)
        self._check_range("warmup", 0.0, 1.0, hi_open=True)


@dataclass(frozen=True)
class ShrinkConfig(MethodConfig):
    """Keep only some of the model's layers, initialized from them (a DistilBERT-style student),
    in place: keep = indices into the layer stack; () = every other layer (0, 2, 4, ...). Follow it
    with a `distill` step, whose teacher is the model as it was before the recipe."""

    method = "shrink_layers"
    keep: tuple[int, ...] = ()

    def validate(self) -> None:
        if any(not isinstance(k, int) or isinstance(k, bool) or k < 0 for k in self.keep):
            raise ConfigError(f"ShrinkConfig.keep={list(self.keep)!r}; accepted: layer indices (integers >= 0)")
        if len(set(self.keep)) != len(self.keep):
            raise ConfigError(f"ShrinkConfig.keep={list(self.keep)!r} repeats a layer")
