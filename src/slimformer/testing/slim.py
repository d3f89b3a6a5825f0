"""Tiny SlimModels (model + tokenizer + kind) for tests: a 99-token word-level tokenizer."""
from __future__ import annotations

from ..models.wrapper import Pooling, SlimModel
from .tiny import tiny_model

_SPECIAL = ["[PAD]", "[BOS]", "[EOS]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_WORDS = ("the a an is are was be to of and in on at for with by from it this that he she they we you i "
          "cat dog man woman child car house tree sky sun water food music book film city road day night "
          "red blue green big small good bad new old fast slow happy sad runs eats plays sits sleeps walks "
          "reads sings drives looks likes loves hates sees makes takes gives goes comes says very not no yes "
          "what who where when why how . , ! ?").split()

# family -> (model kind for the task, task for tiny_model)
_KIND_TASK = {"embedding": "base", "classification": "classification", "causal-lm": "causal-lm",
              "seq2seq-lm": "seq2seq-lm"}


def tiny_tokenizer():
    """A fast word-level tokenizer over 99 ids (7 special + 92 words), no network."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(_SPECIAL + _WORDS[: 99 - len(_SPECIAL)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]",
                                   eos_token="[EOS]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    fast.do_lower_case = True
    return fast


def tiny_slim(family: str = "bert", kind: str = "embedding", seed: int = 0, **overrides) -> SlimModel:
    """A SlimModel around `tiny_model(family, ...)` with the tiny tokenizer."""
    if kind not in _KIND_TASK:
        raise ValueError(f"kind {kind!r}; accepted: {', '.join(_KIND_TASK)}")
    model = tiny_model(family, _KIND_TASK[kind], seed=seed, **overrides)
    pooling = Pooling(mode="mean", normalize=True) if kind == "embedding" else None
    return SlimModel(model, tiny_tokenizer(), kind, pooling, source=f"tiny:{family}")


TINY_INPUT = ["the cat sits on the red car", "a dog runs in the city at night", "what is the big old house"]


def tiny_output(sm: SlimModel, texts: list[str] = TINY_INPUT):
    """The model's output on `texts` without gradients: last hidden state for embedding models,
    logits otherwise (seq2seq: the first 4 input tokens as decoder input)."""
    import torch

    enc = sm.tokenize(texts)
    if sm.kind == "seq2seq-lm":
        enc["decoder_input_ids"] = enc["input_ids"][:, :4]
    with torch.no_grad():
        o = sm.model(**enc)
    return o.last_hidden_state if sm.kind == "embedding" else o.logits
