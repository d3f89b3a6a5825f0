"""Multi-task distillation: one student encoder, one head per task, each task distilled from its
own teacher, losses weighted; batches alternate between tasks (each batch is one task's).

    student = sf.shrink_layers(sf.load(), [0, 2, 4])                      # a sentence encoder
    heads = distill_multitask(student, [
        TaskSpec("stsb", teacher=sf.load(), texts=sentences),                        # embeddings (cosine)
        TaskSpec("sst2", teacher=sst2_classifier, texts=sst2_texts, weight=1.0),      # logits (KD)
    ], sf.DistillConfig(epochs=1))
    logits = heads["sst2"](student.embed(["a fine film"]))

A task whose teacher is an embedding model trains the student's pooled embedding (the config's
embedding loss: embedding_cosine by default, or embedding_mse);
a task whose teacher is a classifier trains a new Linear head on the student's pooled embedding
against the teacher's logits (soft targets at the config's temperature).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import nn

from ..core.errors import ConfigError
from ..train import TrainConfig, Trainer
from ..train.trainer import frozen
from .configs import DistillConfig
from .losses import LOSSES, LossContext, Outputs


@dataclass
class TaskSpec:
    name: str
    teacher: object  # a SlimModel: embedding model or classifier
    texts: list
    weight: float = 1.0


def distill_multitask(student, tasks: list[TaskSpec], config: DistillConfig | None = None, out_dir=None) -> nn.ModuleDict:
    """Train `student` (an embedding SlimModel, in place) on every task; returns the classification
    heads ({task name: Linear(hidden, classes)}) trained alongside."""
    from .api import model_outputs

    cfg = config or DistillConfig()
    if student.kind != "embedding":
        raise ConfigError(f"multi-task distillation trains a sentence encoder with task heads; the student is a "
                          f"{student.kind} model")
    if not tasks or len({t.name for t in tasks}) != len(tasks):
        raise ConfigError("distill_multitask: give tasks with distinct names")
    hidden = student.model.config.hidden_size
    heads = nn.ModuleDict()
    for t in tasks:
        if t.teacher.kind == "classification":
            heads[t.name] = nn.Linear(hidden, t.teacher.model.config.num_labels)
        elif t.teacher.kind != "embedding":
            raise ConfigError(f"task {t.name!r}: teacher kind {t.teacher.kind!r}; accepted: embedding, classification")
        t.teacher.model.eval()
    # one example = one single-task batch: (task index, text indices), shuffled across tasks
    rng = random.Random(cfg.seed)
    specs = []
    for ti, t in enumerate(tasks):
        order = list(range(len(t.texts)))
        rng.shuffle(order)
        specs += [(ti, order[i:i + cfg.batch_size]) for i in range(0, len(order) - cfg.batch_size + 1, cfg.batch_size)]
    if not specs:
        raise ConfigError(f"distill_multitask: every task needs at least batch_size={cfg.batch_size} texts")
    ctx = LossContext(temperature=cfg.temperature)
    emb_loss = next((n for n, _ in cfg.loss_weights("embedding") if n.startswith("embedding_")), "embedding_cosine")

    def collate(items):
        ti, idx = items[0]
        t = tasks[ti]
        return {"task": ti, "enc": dict(student.tokenize([t.texts[i] for i in idx], cfg.max_length))}

    def loss_fn(batch):
        t = tasks[batch["task"]]
        enc = batch["enc"]
        with torch.no_grad():
            teacher = model_outputs(t.teacher, enc, {"logits"} if t.name in heads else {"embedding"})
        emb = model_outputs(student, enc, {"embedding"}).embedding
        with torch.autocast(emb.device.type, enabled=False):  # losses in fp32
            if t.name in heads:
                loss = LOSSES.get("soft")(Outputs(logits=heads[t.name](emb.float())), teacher.float(), ctx)
            else:
                loss = LOSSES.get(emb_loss)(Outputs(embedding=emb.float()), teacher.float(), ctx)
        return t.weight * loss, {t.name: float(loss.detach())}

    module = nn.ModuleDict({"student": student.model, "heads": heads})
    trainer = Trainer(module, loss_fn, specs, collate,
                      TrainConfig(epochs=cfg.epochs, max_steps=cfg.max_steps, lr=cfg.learning_rate("embedding"), batch_size=1,
                                  seed=cfg.seed, mixed_precision=cfg.mixed_precision,
                                  distributed=cfg.distributed),
                      out_dir=out_dir)
    with frozen(*[t.teacher.model for t in tasks]):
        trainer.fit()
    student.model.eval()
    return heads
