"""A model holding slimformer's quantized modules refuses transformers' own save_pretrained."""
from __future__ import annotations

from ..core.errors import SlimformerError


def refuse_plain_save(*args, **kwargs):
    raise SlimformerError("this model holds slimformer's quantized modules: transformers' save_pretrained would write "
                          "a folder that loads as a random model; save it with slimformer.save(model, DIR) and reload "
                          "it with slimformer.load(DIR) (or export it: slimformer export --help)")


def guard_plain_save(sm) -> None:
    """After a step swapped in modules plain transformers does not know (quantized layers), the
    model's own save_pretrained refuses and points to slimformer.save instead of writing a folder
    that transformers and slimformer would both load as a random model."""
    net = getattr(sm, "model", None)
    if net is not None and (getattr(sm, "meta", None) or {}).get("modules") and hasattr(net, "save_pretrained"):
        net.save_pretrained = refuse_plain_save
