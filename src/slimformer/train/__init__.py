"""The one trainer (shared by distillation, training-time pruning and the reference Transformer)."""
from .trainer import Callback, TrainConfig, Trainer, TrainResult

__all__ = ["Trainer", "TrainConfig", "TrainResult", "Callback"]
