"""Train the reference Transformer (models/transformer.py) for translation on the shared trainer.

    model = train_translation(load_task("translation", ".../multi30k/train", pair=("en", "de")),
                              load_task("translation", ".../multi30k/val", pair=("en", "de")),
                              TranslationConfig(), out_dir="runs/en-de")

A joint BPE vocabulary is learned on the training text of both languages (`tokenizers`, 8k by
default) and saved with the model; batches hold up to `max_tokens` padded tokens of sentence
pairs of similar length; AdamW with an inverse-square-root schedule after a linear warm-up;
label smoothing 0.1; dropout; validation BLEU (greedy, a slice of the validation set) after each
epoch; the last `average_last` epoch checkpoints are averaged into the final weights.
Interrupted runs resume from their last checkpoint when run again with the same out_dir.
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..core.errors import ConfigError
from .trainer import TrainConfig, Trainer

SPECIALS = ["[PAD]", "[BOS]", "[EOS]", "[UNK]"]  # ids 0..3 = the model config's pad / bos / eos


@dataclass(frozen=True)
class TranslationConfig:
    """Model sizes, vocabulary and training of `train_translation` (defaults: the Multi30k setup
    of the README). max_tokens: padded tokens per batch (source + target)."""

    vocab_size: int = 8000
    d_model: int = 256
    layers: int = 3
    heads: int = 4
    ffn: int = 1024
    dropout: float = 0.1
    norm: str = "pre"
    positions: str = "sinusoidal"
    label_smoothing: float = 0.1
    max_tokens: int = 4096
    max_length: int = 100
    epochs: float = 10.0
    max_steps: int = 0
    lr: float = 1e-3
    warmup_steps: int = 1000
    weight_decay: float = 0.0001
    average_last: int = 3
    valid_sentences: int = 300
    seed: int = 0
    mixed_precision: str = "auto"
    log_every: int = 50

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "layers", "heads", "ffn", "max_tokens", "max_length", "average_last",
                     "valid_sentences"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"TranslationConfig.{name}={getattr(self, name)!r}; accepted: an integer >= 1")
        if self.d_model % self.heads:
            raise ConfigError(f"TranslationConfig: d_model={self.d_model} is not divisible by heads={self.heads}")
        if not 0 <= self.dropout < 1 or not 0 <= self.label_smoothing < 1:
            raise ConfigError("TranslationConfig: dropout and label_smoothing must be in [0, 1)")


def train_bpe(texts: list[str], vocab_size: int):
    """A joint BPE tokenizer (NFKC, SentencePiece-style word boundaries) that appends [EOS] to
    every sequence it encodes, as a transformers PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, min_frequency=2,
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    eos = tok.token_to_id("[EOS]")
    tok.post_processor = processors.TemplateProcessing(single="$A [EOS]", pair="$A [EOS] $B [EOS]",
                                                      special_tokens=[("[EOS]", eos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]",
                                   unk_token="[UNK]")


def token_batches(src_len: list[int], tgt_len: list[int], max_tokens: int, seed: int) -> list[list[int]]:
    """Pairs grouped by length into batches of at most max_tokens padded tokens, in random order."""
    order = sorted(range(len(src_len)), key=lambda i: (src_len[i], tgt_len[i]))
    batches, cur, longest = [], [], 0
    for i in order:
        n = max(longest, src_len[i], tgt_len[i])
        if cur and (len(cur) + 1) * n * 2 > max_tokens:
            batches.append(cur)
            cur, n = [], max(src_len[i], tgt_len[i])
        cur.append(i)
        longest = n
    if cur:
        batches.append(cur)
    random.Random(seed).shuffle(batches)
    return batches


def build_model(tokenizer, cfg: TranslationConfig):
    from ..models.transformer import SlimTransformerConfig, SlimTransformerForSeq2SeqLM

    mc = SlimTransformerConfig(vocab_size=len(tokenizer), d_model=cfg.d_model, encoder_layers=cfg.layers,
                               decoder_layers=cfg.layers, encoder_attention_heads=cfg.heads,
                               decoder_attention_heads=cfg.heads, encoder_ffn_dim=cfg.ffn, decoder_ffn_dim=cfg.ffn,
                               dropout=cfg.dropout, norm=cfg.norm, positions=cfg.positions,
                               label_smoothing=cfg.label_smoothing, max_position_embeddings=max(256, cfg.max_length + 2),
                               pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                               eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.bos_token_id)
    torch.manual_seed(cfg.seed)
    return SlimTransformerForSeq2SeqLM(mc)


def bleu_of(sm, task, n: int | None = None, num_beams: int = 1, batch_size: int = 64) -> dict:
    """sacreBLEU (cased and lowercased) and chrF of `sm` on the first n pairs of a translation task
    (the evaluation runner's, so the figures match `slimformer evaluate`)."""
    from ..data import Task
    from ..evaluate.runners import TaskOptions, run_translation

    sub = Task("translation", task.examples[:n] if n else task.examples, task.source)
    sm.model.eval()
    return run_translation(sm, sub, TaskOptions(batch_size=batch_size, gen_num_beams=num_beams, progress=False))[0]


def train_translation(train, valid, cfg: TranslationConfig | None = None, out_dir=None, init=None,
                      callbacks=()):
    """Train a reference Transformer on `train` (a translation Task), measuring greedy BLEU on
    `valid` after each epoch. Returns (SlimModel, TrainResult). With out_dir: the tokenizer and
    checkpoints live there, and a re-run resumes. init: a SlimModel to continue from instead of a
    fresh model (its tokenizer too; the size fields of cfg are then ignored), e.g. a student made
    with `shrink_layers` trained on a teacher's translations (sequence-level KD)."""
    from ..models.wrapper import SlimModel

    cfg = cfg or TranslationConfig()
    if train.kind != "translation" or (valid is not None and valid.kind != "translation"):
        raise ConfigError("train_translation: train and valid must be translation tasks")
    out = Path(out_dir) if out_dir is not None else None
    tok_dir = out / "tokenizer" if out is not None else None
    if init is not None:
        tokenizer = init.tokenizer
    elif tok_dir is not None and (tok_dir / "tokenizer.json").exists():
        from transformers import PreTrainedTokenizerFast

        tokenizer = PreTrainedTokenizerFast.from_pretrained(tok_dir)
    else:
        tokenizer = train_bpe([s for p in train.examples for s in p], cfg.vocab_size)
        if tok_dir is not None:
            tokenizer.save_pretrained(tok_dir)
            (out / "translation_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    src = tokenizer([p[0] for p in train.examples], truncation=True, max_length=cfg.max_length)["input_ids"]
    tgt = tokenizer([p[1] for p in train.examples], truncation=True, max_length=cfg.max_length)["input_ids"]
    batches = token_batches([len(s) for s in src], [len(t) for t in tgt], cfg.max_tokens, cfg.seed)
    if init is not None:
        sm, model = init, init.model
        model.train()
    else:
        model = build_model(tokenizer, cfg)
        sm = SlimModel(model, tokenizer, "seq2seq-lm", None, source="slimformer reference Transformer",
                       meta={"translation_config": asdict(cfg)})
    pad = tokenizer.pad_token_id

    def collate(items):
        idx = items[0]
        S = max(len(src[i]) for i in idx)
        T = max(len(tgt[i]) for i in idx)
        x = torch.full((len(idx), S), pad, dtype=torch.long)
        y = torch.full((len(idx), T), -100, dtype=torch.long)
        for r, i in enumerate(idx):
            x[r, :len(src[i])] = torch.tensor(src[i])
            y[r, :len(tgt[i])] = torch.tensor(tgt[i])
        return {"input_ids": x, "attention_mask": (x != pad).long(), "labels": y}

    def loss_fn(batch):
        return model(**batch).loss

    def eval_fn(_module):
        if valid is None:
            return {}
        r = bleu_of(sm, valid, cfg.valid_sentences)
        return {**r, "score": r["bleu"]}

    tc = TrainConfig(epochs=cfg.epochs, max_steps=cfg.max_steps, batch_size=1, lr=cfg.lr,
                     weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps, schedule="inverse_sqrt", clip_norm=1.0,
                     save_every=0, keep=cfg.average_last, seed=cfg.seed, mixed_precision=cfg.mixed_precision,
                     log_every=cfg.log_every)
    trainer = Trainer(model, loss_fn, batches, collate, tc, out_dir=out, eval_fn=eval_fn, callbacks=callbacks)
    result = trainer.fit()
    avg = trainer.average_checkpoints(cfg.average_last)
    if avg is not None and cfg.average_last > 1:
        model.load_state_dict(avg)
    model.eval()
    return sm, result

