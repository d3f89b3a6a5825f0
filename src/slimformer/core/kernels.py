"""Which implementation each quantized module type runs on this machine.

Saved models do not change: a quantized module stores its codes and scales one way, and at run
time asks `kernel(op)` which implementation to use. The choice is made once per process from the
machine (`hardware.cpu_info()`, the device, what this torch build has), can be overridden
(`set_kernels(int8_linear="float")` or the environment variable
`SLIMFORMER_KERNELS="int8_linear=float,int4_linear=dequant"`), and is recorded in
`EvalResult.env["kernels"]`; `slimformer inspect --kernels` prints it with the reasons.

Ops and their implementations (first available wins unless overridden):

- `int8_linear` (W8A8: int8 weights per channel, int8 activations per token or static):
  `int_mm`: `torch._int_mm`, int8 x int8 -> int32 (oneDNN / VNNI / AMX on CPU, tensor cores on
  CUDA), exact integer products; chosen where the CPU has an int8 dot-product instruction
  (AVX-512 VNNI, AVX-VNNI, AMX-INT8) or on CUDA. `float`: the integer values in a float32 matmul
  (exact while partial sums stay below 2^24), the portable reference.
- `int4_linear` (weight-only group-wise int4): `int4pack`: torch's CPU int4 kernel
  (`_weight_int4pack_mm_for_cpu`, weights repacked once at first use, activations and group
  scales in bf16, so outputs differ from the reference by bf16 rounding, ~0.3% relative); needs
  groups of 32/64/128/256 dividing the input and an output width divisible by 16, else that
  module falls back. `dequant`: dequantize the weight in every call, then a float matmul (the
  reference).
- `int8_head` (an LM head tied to the int8 embedding table): `int_mm` (activations quantized per
  token, as `int8_linear`) or `float` (the table dequantized every call, weight-only int8).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

from .errors import ConfigError
from .hardware import cpu_flags

ENV = "SLIMFORMER_KERNELS"


@dataclass(frozen=True)
class Impl:
    name: str
    available: Callable[[], tuple[bool, str]]     # (usable here, why / why not)
    preferred: Callable[[], tuple[bool, str]]     # (fastest here when usable, why)


def _has_op(path: str) -> bool:
    import torch

    obj = torch
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return False
    return True


def _always() -> tuple[bool, str]:
    return True, "portable reference"


def _int8_dot() -> tuple[bool, str]:
    import torch

    if torch.cuda.is_available():
        return True, "CUDA"
    have = sorted(cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})
    if have:
        return True, f"the CPU has int8 dot products ({', '.join(have)})"
    return False, "no int8 dot-product instruction (VNNI / AMX-INT8) on this CPU: int8 matmuls are emulated"


def _int_mm_available() -> tuple[bool, str]:
    if not _has_op("_int_mm"):
        return False, "this torch build has no torch._int_mm"
    return True, "torch._int_mm"


def _int4pack_available() -> tuple[bool, str]:
    if not (_has_op("ops.aten._weight_int4pack_mm_for_cpu") and _has_op("ops.aten._convert_weight_to_int4pack_for_cpu")):
        return False, "this torch build has no CPU int4 kernel (_weight_int4pack_mm_for_cpu)"
    return True, "torch's CPU int4 kernel"


def _int4pack_preferred() -> tuple[bool, str]:
    import torch

    if torch.cuda.is_available():
        return False, "the CPU int4 kernel does not run on CUDA tensors"
    return True, ("packed int4 weights read 8x fewer bytes than float32; with bf16 activations measured 1.4-10x "
                  "fp32 per matmul on an AVX-512 VNNI/BF16 CPU (benchmarks/results/runtime_lm.md)")


def _never() -> tuple[bool, str]:
    return False, "the reference: used when nothing faster is available"


OPS: dict[str, tuple[Impl, ...]] = {
    "int8_linear": (Impl("int_mm", _int_mm_available, _int8_dot), Impl("float", _always, _never)),
    "int4_linear": (Impl("int4pack", _int4pack_available, _int4pack_preferred), Impl("dequant", _always, _never)),
    "int8_head": (Impl("int_mm", _int_mm_available, _int8_dot), Impl("float", _always, _never)),
}

_overrides: dict[str, str] = {}
_chosen: dict[str, str] = {}


def _check(op: str, name: str) -> None:
    if op not in OPS:
        raise ConfigError(f"kernel op {op!r}; accepted: {', '.join(OPS)}")
    names = [i.name for i in OPS[op]]
    if name not in names:
        raise ConfigError(f"kernel {name!r} for {op}; accepted: {', '.join(names)}")


def _env_overrides() -> dict[str, str]:
    text = os.environ.get(ENV, "").strip()
    out = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in item:
            raise ConfigError(f"{ENV}={text!r}: {item!r} is not OP=IMPL; accepted ops: {', '.join(OPS)}")
        op, name = (s.strip() for s in item.split("=", 1))
        _check(op, name)
        out[op] = name
    return out


def set_kernels(**choices: str | None) -> None:
    """Override the choice for ops (`set_kernels(int8_linear="float")`); None returns an op to the
    automatic choice. Takes effect at the next forward of every module."""
    for op, name in choices.items():
        if name is None:
            _overrides.pop(op, None)
        else:
            _check(op, name)
            _overrides[op] = name
        _chosen.pop(op, None)


@contextmanager
def use_kernels(**choices: str | None):
    """set_kernels for the duration of a block, then the previous overrides again."""
    before = dict(_overrides)
    try:
        set_kernels(**choices)
        yield
    finally:
        _overrides.clear()
        _overrides.update(before)
        _chosen.clear()


def _decide(op: str) -> tuple[str, str]:
    forced = {**_env_overrides(), **_overrides}.get(op)
    impls = OPS[op]
    if forced:
        impl = next(i for i in impls if i.name == forced)
        ok, why = impl.available()
        if not ok:
            raise ConfigError(f"kernel {forced!r} for {op} was asked for but is not available here: {why}")
        return forced, "asked for (" + ("set_kernels" if op in _overrides else ENV) + ")"
    for impl in impls:
        ok, why = impl.available()
        pref, pwhy = impl.preferred()
        if ok and pref:
            return impl.name, pwhy
    return impls[-1].name, "; ".join(f"{i.name}: {(i.available()[1] if not i.available()[0] else i.preferred()[1])}"
                                      for i in impls[:-1])


def kernel(op: str) -> str:
    """The implementation `op` runs here (cheap after the first call)."""
    name = _chosen.get(op)
    if name is None:
        name = _chosen[op] = _decide(op)[0]
    return name


def kernel_report() -> list[dict]:
    """One entry per op: the chosen implementation, why, and every candidate's availability."""
    rows = []
    for op, impls in OPS.items():
        name, why = _decide(op)
        rows.append({"op": op, "chosen": name, "why": why,
                     "candidates": {i.name: {"available": i.available()[0], "note": i.available()[1]} for i in impls}})
    return rows


def kernel_choices() -> dict[str, str]:
    """{op: chosen implementation}, as recorded in EvalResult.env."""
    return {op: kernel(op) for op in OPS}


def kernels_of(model) -> dict[str, str]:
    """{op: implementation} for the quantized module types `model` (a SlimModel or nn.Module)
    holds; empty for a float model or an ONNX Runtime artifact."""
    net = getattr(model, "model", model)
    ops = set()
    for mod in getattr(net, "modules", lambda: [])():
        op = getattr(mod, "kernel_op", None)
        if isinstance(op, str):
            ops.add(op)
    return {op: kernel(op) for op in sorted(ops)}
