"""Test helpers shipped with the package: tiny random models (no network)."""
from .tiny import TINY_FAMILIES, tasks_for, tiny_model
from .slim import TINY_INPUT, tiny_output, tiny_slim, tiny_tokenizer

__all__ = ["TINY_FAMILIES", "TINY_INPUT", "tasks_for", "tiny_model", "tiny_output", "tiny_slim", "tiny_tokenizer"]
