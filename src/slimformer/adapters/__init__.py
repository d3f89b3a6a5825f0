"""Architecture adapters: the only code that knows the module names of model families.

    adapter = get_adapter(model)          # dispatch on model.config.model_type
    for layer in adapter.layers(model):   # LayerInfo: attention q/k/v/o, FFN up/down, norms
        ...
    adapter.fix_config(model)             # after surgery: real sizes -> model.config
"""
from __future__ import annotations

from torch import nn

from ..core.errors import UnsupportedArchitectureError
from .base import Adapter, AttentionBlock, FFNBlock, GenericAdapter, LayerInfo, unwrap
from .bert import BertAdapter
from .gpt2 import GPT2Adapter
from .llama import Gemma3Adapter, LlamaAdapter
from .seq2seq import BartAdapter, SlimTransformerAdapter, T5Adapter

ADAPTERS: tuple[Adapter, ...] = (BertAdapter(), LlamaAdapter(), Gemma3Adapter(), GPT2Adapter(),
                                 T5Adapter(), BartAdapter(), SlimTransformerAdapter())

# family name -> the `config.model_type` values its adapter handles
SUPPORTED: dict[str, tuple[str, ...]] = {a.name: a.model_types for a in ADAPTERS}

_BY_MODEL_TYPE: dict[str, Adapter] = {t: a for a in ADAPTERS for t in a.model_types}


def supported_model_types() -> list[str]:
    return sorted(_BY_MODEL_TYPE)


def get_adapter(model) -> Adapter:
    """The adapter for a Hugging Face model, or for a wrapper holding one as `.model`.

    Raises UnsupportedArchitectureError naming the model_type and every supported one.
    """
    hf = unwrap(model)
    config = getattr(hf, "config", None)
    if config is None and isinstance(hf, nn.Module):  # a plain torch module, not a Hugging Face model
        return GenericAdapter()
    model_type = getattr(config, "model_type", None)
    adapter = _BY_MODEL_TYPE.get(model_type)
    if adapter is None:
        what = f"model_type {model_type!r}" if model_type else "a model without config.model_type"
        raise UnsupportedArchitectureError(
            f"Unsupported architecture: {what} ({type(hf).__name__}). "
            f"Supported model_types: {', '.join(supported_model_types())}.")
    return adapter


__all__ = ["get_adapter", "SUPPORTED", "supported_model_types", "Adapter", "AttentionBlock",
           "FFNBlock", "LayerInfo", "ADAPTERS"]
