"""How each quantized module type is rebuilt on load (empty shells of the right shapes; the saved
tensors are loaded into them afterwards). Registered with models.hooks.MODULE_TYPES."""
from __future__ import annotations

from ..models.hooks import register_module_type
from ..models.surgery import set_module
from .modules import GroupQuantLinear, Int8Embedding, Int8Linear, Int8TiedHead, SmoothedLinear
from .rotation import RotatedLinear, RotatedNorm, Rotation


def _int8_linear(model, name, d):
    return Int8Linear(d["in"], d["out"], d["bias"], act=d["act"], smooth=d.get("smooth", False))


def _smoothed_linear(model, name, d):
    return SmoothedLinear(d["in"], d["out"], d["bias"])


def _group_linear(model, name, d):
    new = GroupQuantLinear(d["in"], d["out"], d["bias"], d["bits"], d["group_size"], float_zeros=d.get("float_zeros", False))
    if d.get("input_rotation"):
        new.input_rotation = Rotation(**d["input_rotation"])
    return new


def _rotated_linear(model, name, d):
    return RotatedLinear(d["in"], d["out"], d["bias"], Rotation(**d["input_rotation"]))


def _rotated_norm(model, name, d):
    return RotatedNorm(model.get_submodule(name), Rotation(**d["rotation"]))


def _int8_embedding(model, name, d):
    new = Int8Embedding(d["num"], d["dim"], d.get("padding_idx"))
    for alias in d.get("aliases", []):  # every name that shared the table gets the one module
        set_module(model, alias, new)
    return new


def _int8_tied_head(model, name, d):
    return Int8TiedHead(model.get_submodule(d["embedding"]))


for _name, _build, _late in [("int8_linear", _int8_linear, False), ("smoothed_linear", _smoothed_linear, False),
                             ("group_linear", _group_linear, False), ("rotated_linear", _rotated_linear, False),
                             ("rotated_norm", _rotated_norm, False), ("int8_embedding", _int8_embedding, False),
                             ("int8_tied_head", _int8_tied_head, True)]:
    register_module_type(_name, _build, _late)
