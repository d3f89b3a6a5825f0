"""distill(student, teacher, data, config) and finetune(model, task, config), on the shared trainer."""
from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from torch import nn

from ..adapters import get_adapter
from ..core.config import Applied, Traits, register_method
from ..core.errors import ConfigError, DataError
from ..data.unlabeled import training_texts
from ..train import TrainConfig, Trainer
from ..train.trackers import tracker_callbacks
from ..train.trainer import frozen
from .configs import DistillConfig, FinetuneConfig
from .losses import LOSSES, LossContext, Outputs, layer_map

_NEEDS = {"soft": "logits", "hard": "logits", "kd": "logits", "lm": "logits", "hidden_mse": "hidden", "attention_kl": "attentions",
          "minilm_relation": "qkv", "embedding_mse": "embedding", "embedding_cosine": "embedding"}


def model_outputs(sm, enc: dict, needs: set[str]) -> Outputs:
    """Run `sm` on a batch and collect what the losses need (logits, hidden states, attention
    probabilities, q/k/v projections, the pooled sentence embedding)."""
    if isinstance(sm, Ensemble):
        return _ensemble_outputs(sm, enc, needs)
    model = sm.model
    kw = {}
    if "hidden" in needs or ("embedding" in needs and sm.kind != "embedding"):
        kw["output_hidden_states"] = True
    if "attentions" in needs:
        kw["output_attentions"] = True
    if sm.kind in ("causal-lm", "seq2seq-lm"):
        kw["use_cache"] = False
    qkv, hooks = [], []
    if "qkv" in needs:
        for li in get_adapter(model).layers(model):
            a, slot = li.attention, [None, None, None]
            qkv.append(slot)
            if a.qkv is not None:
                q, kv = a.fused_qkv_split[0], a.fused_qkv_split[1]

                def f(m, i, o, slot=slot, q=q, kv=kv):
                    slot[0], slot[1], slot[2] = o[..., :q], o[..., q:q + kv], o[..., q + kv:]
                hooks.append(a.qkv.register_forward_hook(f))
            else:
                for j, mod in enumerate((a.q, a.k, a.v)):
                    hooks.append(mod.register_forward_hook(lambda m, i, o, slot=slot, j=j: slot.__setitem__(j, o)))
    try:
        enc = {k: v for k, v in enc.items() if k != "labels"}
        out = model(**enc, **kw)
    finally:
        for h in hooks:
            h.remove()
    hidden = list(out.hidden_states) if getattr(out, "hidden_states", None) is not None else None
    emb = None
    if "embedding" in needs:
        last = out.last_hidden_state if getattr(out, "last_hidden_state", None) is not None else hidden[-1]
        pool = sm.pooling
        emb = pool(last, enc["attention_mask"]) if pool is not None else last.mean(1)
    return Outputs(logits=getattr(out, "logits", None), hidden=hidden,
                   attentions=list(out.attentions) if getattr(out, "attentions", None) is not None else None,
                   qkv=[tuple(s) for s in qkv] if qkv else None, embedding=emb)


def _load_teacher(spec, run):
    from ..models import load

    if spec:
        return load(spec)
    if run.original is None:
        raise ConfigError("distill: no teacher: give teacher=PATH (or 'default'), or run the step inside a recipe "
                          "(the teacher is then the model before the recipe)")
    return run.original()


def distill(student, teacher, data, config: DistillConfig | None = None, out_dir=None, eval_task=None, *,
            callbacks=()):
    """Train `student` (a SlimModel, changed in place) to match `teacher` on `data`: a list of
    texts (unlabeled) or a classification Task (labels feed the hard part of "kd"). `teacher` may
    be a list of teachers: their soft targets (probabilities) and embeddings are averaged. eval_task:
    measured after each epoch; the best weights are kept. callbacks: trainer callbacks (training-time
    pruning). Returns the trainer's TrainResult."""
    cfg = config or DistillConfig()
    if isinstance(teacher, (list, tuple)):
        teacher = Ensemble(list(teacher))
    if student.kind != teacher.kind:
        raise ConfigError(f"distill: the student is a {student.kind} model and the teacher a {teacher.kind} model; "
                          "they must do the same task")
    texts, labels = _examples(data)
    losses = cfg.loss_weights(student.kind)
    needs = {_NEEDS[name] for name, _ in losses}
    check_losses(student, cfg)
    token_level = needs & {"hidden", "attentions", "qkv"} or (needs & {"logits"} and student.kind != "classification")
    if token_level and student.tokenizer.get_vocab() != teacher.tokenizer.get_vocab():
        raise ConfigError("distill: the losses " + ", ".join(n for n, _ in losses) + " compare token positions, and "
                          "the student and teacher tokenizers differ; use embedding_mse / embedding_cosine")
    if "attentions" in needs:
        for m in [student.model] + [t.model for t in getattr(teacher, "teachers", [teacher])]:
            m.config._attn_implementation = "eager"  # attention probabilities are only returned by eager attention
    n_s = len(get_adapter(student.model).layers(student.model))
    n_t = len(get_adapter(teacher.model).layers(teacher.model))
    lmap = layer_map(cfg.layer_map, n_s, n_t)
    projections = _projections(student, teacher, needs, lmap)
    teachers = [t.model for t in getattr(teacher, "teachers", [teacher])]
    for t in teachers:
        t.eval()
    with frozen(*teachers):
        return _distill(student, teacher, texts, labels, cfg, losses, needs, lmap, projections, out_dir, eval_task,
                        callbacks)


def _distill(student, teacher, texts, labels, cfg, losses, needs, lmap, projections, out_dir, eval_task, callbacks):
    tok = student.tokenizer

    cached = _teacher_cache(teacher, texts, cfg, out_dir) if needs == {"embedding"} else None

    def collate(idx):
        enc = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=cfg.max_length,
                  return_tensors="pt")
        enc = dict(enc)
        enc["idx"] = torch.tensor(idx)
        if "token_type_ids" in enc and "token_type_ids" not in _forward_args(student.model):
            enc.pop("token_type_ids")
        if labels is not None:
            enc["labels"] = torch.tensor([labels[i] for i in idx])
        return enc

    module = nn.ModuleDict({"student": student.model, "projections": projections})
    ctx = LossContext(temperature=cfg.temperature, beta=cfg.beta, layer_map=lmap, projections=projections,
                      relation_heads=_relation_heads(student, teacher))

    def loss_fn(batch):
        idx = batch.pop("idx")
        if cached is not None:  # the teacher ran once, before training
            t = Outputs(embedding=cached[idx.cpu()].to(idx.device))
        else:
            with torch.no_grad():
                t = model_outputs(teacher, batch, needs)
        s = model_outputs(student, batch, needs)
        ctx.labels = batch.get("labels")
        ctx.mask = batch.get("attention_mask")
        ctx.input_ids = batch.get("input_ids")
        with torch.autocast(idx.device.type, enabled=False):  # losses in fp32 (projections included)
            s, t = s.float(), t.float()
            parts = {name: LOSSES.get(name)(s, t, ctx) for name, _ in losses}
        total = sum(w * parts[name] for name, w in losses)
        return total, {k: float(v.detach()) for k, v in parts.items()}

    trainer = Trainer(module, loss_fn, list(range(len(texts))), collate,
                      TrainConfig(epochs=cfg.epochs, max_steps=cfg.max_steps, lr=cfg.learning_rate(student.kind),
                                  batch_size=cfg.batch_size, seed=cfg.seed, warmup=0.1, mixed_precision=cfg.mixed_precision,
                                  distributed=cfg.distributed),
                      out_dir=out_dir, eval_fn=_eval_fn(student, eval_task), callbacks=callbacks)
    result = trainer.fit()
    if eval_task is not None:
        trainer.load_best()
    student.model.eval()
    return result


def _shared_teacher_cache(run, teacher, texts, cfg):
    """With run.cache_dir (runs that distil from the same teacher on the same texts, e.g. the
    planner's trials): the teacher's embeddings are copied in from there before training, or after
    it (the returned callable) copied there for the next run."""
    import hashlib
    import shutil

    if run.cache_dir is None or run.step_dir is None or getattr(teacher, "teachers", None):
        return None
    from ..core.run import weights_fingerprint

    h = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    shared = Path(run.cache_dir) / f"teacher-{weights_fingerprint(teacher.model)}-{h}-{cfg.max_length}.pt"
    local = Path(run.step_dir) / "teacher_embeddings.pt"
    if shared.exists() and not local.exists():
        local.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared, local)
        return None

    def keep() -> None:
        if local.exists() and not shared.exists():
            shared.parent.mkdir(parents=True, exist_ok=True)
            tmp = shared.with_name(f".{shared.name}.{os.getpid()}.tmp")
            shutil.copyfile(local, tmp)
            os.replace(tmp, shared)

    return keep


@torch.no_grad()
def _teacher_cache(teacher, texts, cfg, out_dir) -> torch.Tensor:
    """The teacher's sentence embeddings of every training text, computed once (and kept in
    out_dir/teacher_embeddings.pt, so a resumed run does not recompute them)."""
    path = Path(out_dir) / "teacher_embeddings.pt" if out_dir is not None else None
    if path is not None and path.exists():
        cached = torch.load(path)
        if cached.shape[0] == len(texts):
            return cached
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths: less padding
    out = torch.empty(len(texts), teacher.model.config.hidden_size)
    from tqdm.auto import tqdm

    for b in tqdm(range(0, len(order), 256), desc="teacher embeddings", leave=False):
        idx = order[b:b + 256]
        enc = teacher.tokenize([texts[i] for i in idx], cfg.max_length)
        out[idx] = model_outputs(teacher, enc, {"embedding"}).embedding.float()
    if path is not None:  # several processes (torchrun) share the work folder: each its own temporary file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(out, tmp)
        tmp.replace(path)
    return out


class Ensemble:
    """Several teachers behind one teacher's interface (same kind and tokenizer): outputs are
    averaged (class / token probabilities, sentence embeddings); hidden-state losses use the first."""

    def __init__(self, teachers: list):
        if not teachers:
            raise ConfigError("distill: an empty list of teachers")
        kinds = {t.kind for t in teachers}
        if len(kinds) > 1:
            raise ConfigError(f"distill: teachers of different kinds {sorted(kinds)}")
        self.teachers = teachers
        first = teachers[0]
        self.kind, self.tokenizer, self.pooling, self.model = first.kind, first.tokenizer, first.pooling, first.model
        self.source = " + ".join(t.source for t in teachers)

    def tokenize(self, *args, **kw):
        return self.teachers[0].tokenize(*args, **kw)


def _ensemble_outputs(ens: Ensemble, enc, needs) -> Outputs:
    outs = [model_outputs(t, enc, needs) for t in ens.teachers]
    first = outs[0]
    if first.logits is not None:
        probs = torch.stack([o.logits.float().softmax(-1) for o in outs]).mean(0)
        first.logits = probs.clamp_min(1e-12).log()  # log of the averaged probabilities: softmax gives them back
    if first.embedding is not None:
        first.embedding = torch.stack([o.embedding.float() for o in outs]).mean(0)
    return first


def _relation_heads(student, teacher) -> int:
    """MiniLM relation heads: the teacher's head count, lowered until it divides both q widths."""
    a_s = get_adapter(student.model).layers(student.model)[0].attention
    a_t = get_adapter(teacher.model).layers(teacher.model)[0].attention
    ws, wt = a_s.num_heads * a_s.head_dim, a_t.num_heads * a_t.head_dim
    h = a_t.num_heads
    while ws % h or wt % h:
        h -= 1
    return h


def _examples(data):
    from ..data import Task

    if isinstance(data, Task):
        if data.kind == "classification":
            return [e[0] for e in data.examples], [int(e[1]) for e in data.examples]
        return data.texts(), None
    if isinstance(data, (str, Path)):
        return training_texts(str(data)), None
    texts = [t for t in (data or []) if isinstance(t, str) and t.strip()]
    if not texts:
        raise DataError("distill needs training texts (a list of sentences, a text file or a task); none were given")
    return texts, None


def _forward_args(model) -> set:
    import inspect

    return set(inspect.signature(model.forward).parameters)


def _projections(student, teacher, needs, lmap) -> nn.ModuleDict:
    proj = nn.ModuleDict()
    hs = student.model.config.hidden_size if hasattr(student.model.config, "hidden_size") else None
    ht = teacher.model.config.hidden_size if hasattr(teacher.model.config, "hidden_size") else None
    if hs and ht and hs != ht:
        if "hidden" in needs:
            for si, _ in lmap:
                proj[f"hidden{si}"] = nn.Linear(hs, ht)
        if "embedding" in needs:
            proj["embedding"] = nn.Linear(hs, ht)
    return proj


def _eval_fn(sm, task):
    if task is None:
        return None
    from ..evaluate.runners import RUNNERS, TaskOptions

    key = {"stsb": "spearman", "classification": "accuracy"}.get(task.kind)

    def f(_module):
        sm.model.eval()
        metrics = RUNNERS[task.kind](sm, task, TaskOptions(progress=False))[0]
        sm.model.train()
        return {**metrics, "score": metrics.get(key, 0.0)}
    return f


@torch.no_grad()
def sequence_kd_texts(teacher, prompts: list[str], max_new_tokens: int = 64, num_beams: int = 4,
                      batch_size: int = 8) -> list[str]:
    """Sequence-level KD targets: the teacher's beam-search continuation of each prompt, returned
    as prompt + continuation texts to train a student on with the "lm" loss."""
    if teacher.kind != "causal-lm":
        raise ConfigError(f"sequence-level KD generates with a causal LM; the teacher is a {teacher.kind} model")
    tok = teacher.tokenizer
    old = getattr(tok, "padding_side", "right")
    tok.padding_side = "left"  # generation continues from the last real token
    out = []
    try:
        for i in range(0, len(prompts), batch_size):
            enc = tok(prompts[i:i + batch_size], return_tensors="pt", padding=True)
            gen = teacher.model.generate(**enc, max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False,
                                         pad_token_id=tok.pad_token_id)
            out += tok.batch_decode(gen, skip_special_tokens=True)
    finally:
        tok.padding_side = old
    return out


def check_losses(model, cfg: DistillConfig) -> None:
    """The losses have something to compare for this kind of model (a sentence-embedding model
    has no logits)."""
    losses = cfg.loss_weights(model.kind)
    if model.kind == "embedding" and any(_NEEDS[n] == "logits" for n, _ in losses):
        fit = sorted(n for n, need in _NEEDS.items() if need != "logits")
        raise ConfigError(f"distill: loss {', '.join(n for n, _ in losses if _NEEDS[n] == 'logits')} compares logits, "
                          f"and a sentence-embedding model has none; accepted for it: {', '.join(fit)}")


@register_method(DistillConfig, traits=Traits(trains=True, needs_original=True), check=check_losses)
def distill_step(sm, cfg: DistillConfig, run) -> Applied:
    """Recipe step: recover the model by distillation from the teacher (default: the model as it
    was before the recipe, so `prune -> distill` recipes work). Trains on the config's `unlabeled`
    file, else the run's unlabeled texts, else (with a warning) its calibration texts; keeps
    checkpoints in the step's folder; runs the training-time pruning of the steps before it."""
    teacher = _load_teacher(cfg.teacher, run)
    warnings = []
    if cfg.unlabeled:
        texts = training_texts(cfg.unlabeled)
    elif run.unlabeled:
        texts = list(run.unlabeled)
    else:
        texts = list(run.calibration)
        warnings.append(f"distill: trained on the {len(texts)} calibration texts; give unlabeled sentences "
                        "(compress --unlabeled FILE, or the step's `unlabeled`) for a real recovery")
    callbacks = run.take_training_callbacks() + tracker_callbacks(run.trackers, run.step_dir, "distill")
    eval_task = run.task if cfg.keep_best else None
    shared = _shared_teacher_cache(run, teacher, texts, cfg)
    res = distill(sm, teacher, texts, cfg, out_dir=run.step_dir, eval_task=eval_task, callbacks=callbacks)
    if shared is not None:
        shared()
    resumed = f", resumed at step {res.resumed_from}" if res.resumed_from else ""
    loss = f"{res.final_loss:.4g}" if res.final_loss is not None else "(no step left to run)"
    details = {"steps": res.steps, "epochs": res.epochs, "seconds": res.seconds, "final_loss": res.final_loss,
               "texts": len(texts), "precision": res.precision, "resumed_from": res.resumed_from,
               "best": res.best, "curve": [h for h in res.history if "loss" in h]}
    warnings += _finish_callbacks(sm, callbacks, details)
    return Applied(warnings + [f"distill: {res.steps} steps ({res.epochs:.2f} epochs) on {len(texts):,} texts in "
                               f"{res.seconds:.0f} s{resumed}, final loss {loss}"], details)


def _finish_callbacks(sm, callbacks, details: dict) -> list[str]:
    """Let each training-time pruning callback make its masks permanent (details under "pruned")."""
    warnings, pruned = [], []
    for cb in callbacks:
        finish = getattr(cb, "finalize", None)
        if finish is not None:
            out = finish() or {}
            pruned.append({"callback": type(cb).__name__, **(out if isinstance(out, dict) else {"result": out})})
            warnings.append(f"{type(cb).__name__}: applied during training and made permanent")
    if pruned:
        details["pruned_during_training"] = pruned
    return warnings


@register_method(FinetuneConfig, traits=Traits(trains=True))
def finetune_step(sm, cfg: FinetuneConfig, run) -> Applied:
    """Recipe step: fine-tune on the run's labeled training data (`run.train_task`; the CLI's
    `finetune --data`), reporting the evaluation task's metric each epoch and keeping the best."""
    if run.train_task is None:
        raise ConfigError("finetune needs labeled training data: slimformer finetune --task T --data TRAIN, or "
                          "compress(..., options=CompressOptions(train_task=...))")
    callbacks = run.take_training_callbacks() + tracker_callbacks(run.trackers, run.step_dir, "finetune")
    new, res = finetune(sm, run.train_task, cfg, out_dir=run.step_dir, eval_task=run.task, callbacks=callbacks)
    details = {"steps": res.steps, "epochs": res.epochs, "seconds": res.seconds, "final_loss": res.final_loss,
               "best": res.best, "precision": res.precision, "resumed_from": res.resumed_from,
               "curve": [h for h in res.history if "loss" in h]}
    warnings = _finish_callbacks(new, callbacks, details)
    warnings.append(f"finetune: {res.steps} steps in {res.seconds:.0f} s" + (f"; best {res.best}" if res.best else ""))
    if new is not sm:  # a new classification head on the encoder: the run continues with that model
        new.meta.setdefault("steps", []).append({**cfg.to_dict(), "details": details})
        return Applied(warnings, details, model=new)
    return Applied(warnings, details)


# ------------------------------------------------------------------ fine-tuning


def finetune(model, task, config: FinetuneConfig | None = None, out_dir=None, eval_task=None, *, callbacks=()):
    """Fine-tune `model` on a labeled `task` (classification or stsb). An embedding model trained
    on classification becomes a classifier (a new head on its encoder); on stsb it stays a
    sentence encoder (cosine of a pair fit to score / 5). Returns the model (a new SlimModel for
    a new classifier) and the TrainResult."""
    cfg = config or FinetuneConfig()
    if task.kind == "classification":
        sm = model if model.kind == "classification" else to_classifier(model, task)
        texts = [e[0] for e in task.examples]
        labels = [int(e[1]) for e in task.examples]
        tok = sm.tokenizer

        def collate(idx):
            enc = dict(tok([texts[i] for i in idx], padding=True, truncation=True, max_length=cfg.max_length,
                           return_tensors="pt"))
            enc["labels"] = torch.tensor([labels[i] for i in idx])
            return enc

        def loss_fn(batch):
            return sm.model(**batch).loss
        n = len(texts)
    elif task.kind == "stsb":
        if model.kind != "embedding":
            raise ConfigError(f"finetune on stsb trains sentence embeddings; the model is a {model.kind} model")
        sm = model
        pairs = [(e[0], e[1], float(e[2]) / 5.0) for e in task.examples]

        def collate(idx):
            a = dict(sm.tokenize([pairs[i][0] for i in idx], cfg.max_length))
            b = dict(sm.tokenize([pairs[i][1] for i in idx], cfg.max_length))
            return {"a": a, "b": b, "score": torch.tensor([pairs[i][2] for i in idx])}

        def loss_fn(batch):
            ea = model_outputs(sm, batch["a"], {"embedding"}).embedding
            eb = model_outputs(sm, batch["b"], {"embedding"}).embedding
            return torch.nn.functional.mse_loss(torch.nn.functional.cosine_similarity(ea, eb), batch["score"])
        n = len(pairs)
    else:
        raise ConfigError(f"finetune: task {task.kind!r} is not supported; accepted: classification, stsb")
    trainer = Trainer(sm.model, loss_fn, list(range(n)), collate,
                      TrainConfig(epochs=cfg.epochs, max_steps=cfg.max_steps, lr=cfg.lr, batch_size=cfg.batch_size,
                                  warmup=cfg.warmup, seed=cfg.seed, mixed_precision=cfg.mixed_precision,
                                  distributed=cfg.distributed),
                      out_dir=out_dir, eval_fn=_eval_fn(sm, eval_task), callbacks=callbacks)
    result = trainer.fit()
    if eval_task is not None:
        trainer.load_best()
    sm.model.eval()
    return sm, result


def to_classifier(model, task):
    """A classifier on `model`'s encoder (its weights), with a new head for the task's labels."""
    import transformers as tf

    from ..models.wrapper import SlimModel

    labels = sorted({int(e[1]) for e in task.examples})
    if labels[0] < 0:
        raise DataError(f"{task.source}: classification labels must be 0..N-1; got {labels[:5]}")
    config = copy.deepcopy(model.model.config)
    config.num_labels = labels[-1] + 1
    config.architectures = None
    clf = tf.AutoModelForSequenceClassification.from_config(config)
    missing, unexpected = clf.base_model.load_state_dict(model.model.state_dict(), strict=False)
    if unexpected:
        raise ConfigError(f"to_classifier: the encoder's weights do not fit the classifier ({unexpected[:3]})")
    return SlimModel(clf, model.tokenizer, "classification", None, source=f"{model.source} (+ classifier head)",
                     meta={"steps": [{"method": "to_classifier", "num_labels": config.num_labels}]})
