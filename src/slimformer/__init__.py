"""slimformer: make Transformer models smaller and faster, and prove what it cost."""


def _check_transformers() -> None:
    """slimformer is tested with transformers 5.x; 4.x misreads rope settings silently."""
    import importlib.metadata

    v = importlib.metadata.version("transformers")
    if not v.split(".")[0] == "5":
        raise ImportError(f"slimformer needs transformers 5.x (tested with 5.24); this environment has {v}: "
                          "pip install 'transformers>=5,<6'")


def _quiet_optional_imports() -> None:
    """transformers imports torchao when it is installed (the executorch extra); torchao then logs
    one warning per CUDA-only library it cannot load on a CPU build, and torch one per enum torchao
    registers. Noise on every command: kept to errors."""
    import logging

    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)


_check_transformers()
_quiet_optional_imports()

from ._version import __version__  # noqa: E402
from .core import SlimformerError, ConfigError, DataError, UnsupportedArchitectureError, MethodConfig
from .models import SlimModel, load, save
from .models.transformer import register_auto_classes as _register
from .models.summary import summarize
from .data import load_task, Task, calibration_texts, sample_sentences
from .evaluate import evaluate, EvalResult, EvalOptions, TaskOptions, TimingOptions
from .recipes import compress, CompressionResult, StepRecord, load_recipe, CompressOptions
from .quantize import (quantize_, Int8DynamicConfig, Int8StaticConfig, WeightOnlyConfig, SmoothQuantConfig,
                       MixedPrecisionConfig, AwqConfig, RotateConfig, CastConfig)  # also registers the methods
from .export import ExportConfig  # registers the onnx step and the exported-folder loader
from .prune import (prune_, MagnitudeConfig, WandaConfig, SparseGPTConfig, HeadPruningConfig, FFNPruningConfig,
                    LayerDropConfig)  # registers the pruning methods
from .distill import distill, finetune, shrink_layers, DistillConfig, FinetuneConfig, ShrinkConfig  # registers the distill step
from .train import Trainer, TrainConfig
from .attention import set_attention_, AttentionConfig, GQAConfig  # registers the attention and gqa steps
from .plan import plan, Budget, PlanOptions, PlanResult
from .factorize import (factorize_, SvdConfig, FwsvdConfig, AsvdConfig, SvdLlmConfig, EmbeddingFactorConfig,
                        ShareLayersConfig, BasisSharingConfig)  # registers the factorization methods

__all__ = [
    "__version__", "SlimformerError", "ConfigError", "DataError", "UnsupportedArchitectureError", "MethodConfig",
    "SlimModel", "load", "save", "summarize", "load_task", "Task", "calibration_texts", "sample_sentences",
    "evaluate", "EvalResult", "EvalOptions", "TaskOptions", "TimingOptions",
    "quantize_", "Int8DynamicConfig", "Int8StaticConfig", "WeightOnlyConfig", "SmoothQuantConfig",
    "MixedPrecisionConfig", "AwqConfig", "RotateConfig", "CastConfig", "ExportConfig",
    "prune_", "MagnitudeConfig", "WandaConfig", "SparseGPTConfig", "HeadPruningConfig", "FFNPruningConfig",
    "LayerDropConfig", "distill", "finetune", "shrink_layers", "DistillConfig", "FinetuneConfig", "ShrinkConfig", "Trainer",
    "TrainConfig", "set_attention_", "AttentionConfig", "GQAConfig",
    "factorize_", "SvdConfig", "FwsvdConfig", "AsvdConfig", "SvdLlmConfig", "EmbeddingFactorConfig",
    "ShareLayersConfig", "BasisSharingConfig",
    "compress", "CompressionResult", "StepRecord", "load_recipe", "CompressOptions", "plan", "Budget", "PlanOptions", "PlanResult",
]

_register()  # AutoConfig / AutoModelForSeq2SeqLM know the reference Transformer (models/transformer.py)
