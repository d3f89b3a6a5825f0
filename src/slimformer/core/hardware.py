"""What the machine can do fast: the CPU's SIMD / matrix-unit flags and the accelerator.

One place that reads them, so evaluation records them, export picks 7- or 8-bit weights by them,
and training picks bf16 autocast by them."""
from __future__ import annotations

import contextlib
from functools import lru_cache

FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")


@lru_cache(maxsize=1)
def cpu_info() -> dict:
    """What decides which kernels are fast: torch's CPU capability, the CPU model and its SIMD flags."""
    import torch

    out = {"cpu_capability": torch.backends.cpu.get_cpu_capability()}
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return out
    for line in text.splitlines():
        if line.startswith("model name") and "cpu_model" not in out:
            out["cpu_model"] = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            out["cpu_flags"] = [f for f in FLAGS if f in flags]
            break
    return out


def cpu_flags() -> set[str]:
    return set(cpu_info().get("cpu_flags", []))


def has_vnni() -> bool:
    """Whether this CPU has an int8 dot-product instruction (AVX-512 VNNI or AVX-VNNI)."""
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni"})


def fast_bf16(device: str = "cpu") -> bool:
    """Whether bf16 matmuls run natively (faster than fp32): a CUDA GPU that supports bf16, or a
    CPU with AMX-BF16 tiles or AVX512-BF16 instructions. Elsewhere bf16 is emulated and slower."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool(cpu_flags() & {"amx_bf16", "avx512_bf16"})


def resolve_precision(name: str, device: str = "cpu") -> str:
    """Training precision: "auto" -> "bf16" where bf16 is native (fast_bf16), else "no"."""
    if name == "auto":
        return "bf16" if fast_bf16(device) else "no"
    return name


def available_memory() -> int:
    """Bytes of memory available to a new allocation now (Linux MemAvailable; 0 when unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


@contextlib.contextmanager
def one_thread():
    """Run the block on one intra-op thread. For batched LAPACK calls (many small solves): torch
    parallelises over the batch and MKL's LAPACK opens its own OpenMP team inside each, and the
    nested teams spin on each other's locks (a refit of an 8B's down projection sat in
    mkl_lapack_dgetrf for over half an hour on 2 busy cores)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
