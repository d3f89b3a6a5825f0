"""Tiny random Hugging Face models for tests: hidden 32, 2 layers, 4 heads, vocab 99.

Built from config classes only (no network). FFN width 37 (odd, so shape mistakes show);
Llama-family models use 2 kv heads (GQA); T5 uses d_kv 16 != hidden / heads to exercise it;
Gemma 3 alternates sliding and full attention layers.

    model = tiny_model("bert", "classification")     # BertForSequenceClassification, eval mode
    model = tiny_model("t5", feed_forward_proj="gated-gelu")   # config overrides
"""
from __future__ import annotations

import torch
import transformers as T

V, H, L, NH, FF, POS = 99, 32, 2, 4, 37, 128

_COMMON = dict(vocab_size=V, hidden_size=H, num_hidden_layers=L, num_attention_heads=NH,
               intermediate_size=FF, max_position_embeddings=POS)
_LLAMA = dict(_COMMON, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
_SEQ2SEQ = dict(vocab_size=V, d_model=H, encoder_layers=L, decoder_layers=L,
                encoder_attention_heads=NH, decoder_attention_heads=NH, encoder_ffn_dim=FF,
                decoder_ffn_dim=FF, max_position_embeddings=POS)

# family -> (config class, config kwargs, kind)
_FAMILIES = {
    "bert": (T.BertConfig, _COMMON, "encoder"),
    "roberta": (T.RobertaConfig, dict(_COMMON, max_position_embeddings=POS + 2), "encoder"),
    "distilbert": (T.DistilBertConfig, dict(vocab_size=V, dim=H, n_layers=L, n_heads=NH,
                                            hidden_dim=FF, max_position_embeddings=POS), "encoder"),
    "mpnet": (T.MPNetConfig, dict(_COMMON, max_position_embeddings=POS + 2), "encoder"),
    "llama": (T.LlamaConfig, _LLAMA, "decoder"),
    "mistral": (T.MistralConfig, dict(_LLAMA, sliding_window=16), "decoder"),
    "qwen2": (T.Qwen2Config, _LLAMA, "decoder"),
    "gemma3": (T.Gemma3TextConfig, dict(_LLAMA, head_dim=8, query_pre_attn_scalar=8, sliding_window=16,
                                        layer_types=["sliding_attention", "full_attention"]),
               "decoder"),
    "gpt2": (T.GPT2Config, dict(vocab_size=V, n_embd=H, n_layer=L, n_head=NH, n_inner=FF,
                                n_positions=POS, bos_token_id=1, eos_token_id=2, pad_token_id=0),
             "decoder"),
    "t5": (T.T5Config, dict(vocab_size=V, d_model=H, d_kv=16, d_ff=FF, num_layers=L,
                            num_decoder_layers=L, num_heads=NH, decoder_start_token_id=0),
           "seq2seq"),
    "bart": (T.BartConfig, _SEQ2SEQ, "seq2seq"),
    "marian": (T.MarianConfig, dict(_SEQ2SEQ, decoder_vocab_size=V, pad_token_id=0, eos_token_id=2,
                                    decoder_start_token_id=0, forced_eos_token_id=2), "seq2seq"),
    "slim-transformer": (None, dict(_SEQ2SEQ, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                    decoder_start_token_id=1, dropout=0.0), "seq2seq"),
}

TINY_FAMILIES: tuple[str, ...] = tuple(_FAMILIES)

_AUTO = {"base": T.AutoModel, "classification": T.AutoModelForSequenceClassification,
         "causal-lm": T.AutoModelForCausalLM, "seq2seq-lm": T.AutoModelForSeq2SeqLM,
         "masked-lm": T.AutoModelForMaskedLM}

_TASKS = {
    "encoder": ("base", "classification", "masked-lm"),
    "decoder": ("base", "classification", "causal-lm"),
    "seq2seq": ("base", "classification", "seq2seq-lm"),
}


def tasks_for(family: str) -> tuple[str, ...]:
    """The tasks `tiny_model` accepts for a family."""
    _check_family(family)
    tasks = _TASKS[_FAMILIES[family][2]]
    return tuple(t for t in tasks if not (family in ("marian", "slim-transformer") and t == "classification"))


def tiny_model(family: str, task: str = "base", seed: int = 0, **overrides) -> torch.nn.Module:
    """A tiny randomly initialised model of `family` for `task`, in eval mode.

    family: one of TINY_FAMILIES. task: "base", "classification" (2 labels), "causal-lm",
    "seq2seq-lm", "masked-lm", where the family has it (see `tasks_for`). `overrides` are
    passed to the config class (e.g. feed_forward_proj="gated-gelu" for T5 v1.1).
    """
    accepted = tasks_for(family)
    if task not in accepted:
        raise ValueError(f"task {task!r} is not available for tiny {family!r}; "
                         f"accepted: {', '.join(accepted)}")
    config_cls, kwargs, _ = _FAMILIES[family]
    if config_cls is None:  # slimformer's reference Transformer
        from ..models.transformer import SlimTransformerConfig

        config_cls = SlimTransformerConfig
    config = config_cls(**{**kwargs, **overrides})
    if task == "classification":
        config.num_labels = 2
    torch.manual_seed(seed)
    model = _AUTO[task].from_config(config)
    return model.eval()


def _check_family(family: str) -> None:
    if family not in _FAMILIES:
        raise ValueError(f"unknown tiny model family {family!r}; accepted: {', '.join(TINY_FAMILIES)}")
