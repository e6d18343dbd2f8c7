"""Host tuning for training: glibc's allocator on CPUs, mixed precision where the hardware computes
it natively, and the peak FLOP/s that MFU divides by."""

from __future__ import annotations

import torch

# Peak dense bf16 FLOP/s by device name, for MFU. Unknown devices (and CPUs) report no MFU.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "4090": 165e12}


def keep_freed_memory() -> bool:
    """Let glibc reuse freed memory for large CPU tensors instead of mapping fresh pages each time.

    Blocks above glibc's mmap threshold (at most 32 MB by default) are mmapped on allocation and
    unmapped on free, so every step's (tokens x vocabulary) logits, softmax and gradient buffers
    fault in fresh zeroed pages (a large share of a small model's CPU step; docs/benchmarks.md).
    Raising the mmap and trim thresholds keeps such blocks in the heap for reuse: the effect of
    running with jemalloc or tcmalloc, which CPU training guides recommend, without preloading a
    library. Process-wide, glibc only; returns whether it applied (elsewhere it does nothing).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h>
    return bool(mallopt(m_mmap_threshold, 1 << 30)) and bool(mallopt(m_trim_threshold, 1 << 30))


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX), where bf16
    autocast is a speed-up; elsewhere it is emulated and slower than fp32."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private torch API: may vanish
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def mixed_precision(choice: str) -> str:
    """``auto``: bf16 where the hardware computes it natively (a GPU that has it; on a CPU-only
    machine, a CPU with bf16 matrix instructions, where it trains faster to the same loss), else fp32."""
    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    return "bf16" if cpu_has_native_bf16() else "no"


def forget_other_precision(precision: str) -> None:
    """accelerate keeps one state per process and refuses a second ``Accelerator`` with another mixed
    precision, so a notebook or script training one run in bf16 and the next in fp32 would fail.
    Dropping that state's precision part (not the process group's) lets the new one take over."""
    from accelerate.state import AcceleratorState

    shared = AcceleratorState._shared_state
    if shared and shared.get("_mixed_precision") != precision:
        AcceleratorState._reset_state()


def peak_flops(device: torch.device) -> float | None:
    """The device's peak dense bf16 FLOP/s (:data:`PEAK_FLOPS`), None where unknown."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_FLOPS.items() if key in name), None)
