"""Knowledge distillation and fine-tuning: losses (a registry), layer maps, students, and the
`distill` recipe step, all training through the shared trainer (slimformer.train)."""
from __future__ import annotations

from .api import distill, distill_step, finetune, finetune_step, model_outputs, sequence_kd_texts, to_classifier
from .configs import DistillConfig, FinetuneConfig, ShrinkConfig
from .losses import LOSSES, LossContext, Outputs, layer_map
from .multitask import TaskSpec, distill_multitask
from .students import shrink_layers, shrink_step, student_from_config


__all__ = ["distill", "finetune", "shrink_layers", "student_from_config", "DistillConfig", "FinetuneConfig", "ShrinkConfig", "LOSSES", "LossContext",
           "Outputs", "layer_map", "model_outputs", "to_classifier", "sequence_kd_texts", "TaskSpec",
           "distill_multitask"]
