"""Efficient attention: implementations swappable into loaded models by name, long inputs in
bounded memory (attention sinks + window, heavy hitters), KV-cache quantization and GQA/MQA
conversion."""
from .registry import ATTENTION, AttentionImpl, options_of
from .hf import set_attention_, current_attention
from .config import AttentionConfig
from .cache import kv_cache, cache_bytes, SinkWindowLayer, HeavyHitterLayer, QuantizedKVLayer
from ..evaluate.streaming import stream_perplexity
from .gqa import GQAConfig, to_gqa_

__all__ = ["ATTENTION", "AttentionImpl", "options_of", "set_attention_", "current_attention", "AttentionConfig",
           "kv_cache", "cache_bytes", "SinkWindowLayer", "HeavyHitterLayer", "QuantizedKVLayer", "stream_perplexity",
           "GQAConfig", "to_gqa_"]
