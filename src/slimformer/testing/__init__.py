"""Test helpers shipped with the package: tiny random models (no network)."""
from .tiny import TINY_FAMILIES, tasks_for, tiny_model
from .slim import tiny_slim, tiny_tokenizer

__all__ = ["TINY_FAMILIES", "tasks_for", "tiny_model", "tiny_slim", "tiny_tokenizer"]
