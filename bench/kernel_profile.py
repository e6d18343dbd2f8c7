"""Where a training step's device time goes: kernel time by kind, the top kernels, and how busy the
device was between the first launch and the last sync.

``bench/train.py --profile N`` profiles N more steps of every run after its timed ones (phf's
objectives through ``Trainer._step``, the minimal GPT and the minimal loop on phf's model through
their own loop) and prints one table across runs. Two runs with the same tokens/s gap can differ
in why: a lower busy share means the device waited for the host (launches, host reads, data), a
larger kernel total at the same busy share means more or slower kernels. The profiler adds a few
microseconds of host time per launch, so busy shares are lower than in the timed steps; compare
them between runs of one benchmark, not with tokens/s.

On a CPU the "kernels" are ATen operators (self time) and the busy share is the share of wall time
spent inside them; the rest is Python and framework overhead.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from collections.abc import Callable

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

# First match wins, on the lower-cased kernel or operator name: an inductor kernel named for a
# log-softmax counts as loss, grad-norm clipping's multi-tensor kernels as optimizer.
KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("attention", ("flash", "fmha", "attention", "scaled_dot")),
    ("matmul", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "triton_tem_", "aten::mm", "aten::addmm", "aten::bmm")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("softmax_loss", ("softmax", "nll_loss", "cross_entropy", "logsumexp", "gather", "scatter")),
    ("copy", ("memcpy", "memset", "aten::copy_", "aten::_to_copy")),
    ("fused", ("triton", "cpp_fused", "compiled")),  # inductor's generated kernels
)
OTHER = "other"
REFERENCE = "minimal_gpt"  # the run the others are compared with, when profiled
KIND_NAMES = tuple(kind for kind, _ in KINDS) + (OTHER,)
TOP = 6


def kind_of(name: str) -> str:
    lowered = name.lower()
    return next((kind for kind, keys in KINDS if any(key in lowered for key in keys)), OTHER)


def _busy_us(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals."""
    busy, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            busy += end - max(start, reach)
            reach = end
    return busy


def profile_steps(run_steps: Callable[[], None], device: torch.device, steps: int) -> dict | None:
    """Profile ``run_steps()`` (``steps`` training steps, ending with the device idle or not: it is
    synchronised here) and summarise per step: ``kernel_ms`` by kind and in ``total``,
    ``wall_ms``, ``busy_share``, ``kernels`` (launches per step) and the ``top`` kernels.

    A failure (a profiler that cannot trace this device, say) is printed and returns None: the
    figures timed before it matter more than the profile, and a lent GPU's minutes are few."""
    try:
        return _profile_steps(run_steps, device, steps)
    except Exception as exc:
        print(f"kernel profile failed, left out: {exc!r}", file=sys.stderr, flush=True)
        return None


def _profile_steps(run_steps: Callable[[], None], device: torch.device, steps: int) -> dict:
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        started = time.perf_counter()
        run_steps()
        if cuda:
            torch.cuda.synchronize(device)
        wall_us = (time.perf_counter() - started) * 1e6
    if cuda:
        # Kernels, copies and memsets; record_function ranges mirrored on the GPU timeline
        # (user annotations: the optimizer step, compiled graphs) would count their kernels twice.
        events = [
            (e.name, e.time_range.start, e.time_range.end)
            for e in prof.events()
            if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)
        ]
        busy = _busy_us([(start, end) for _, start, end in events])
        timed = [(name, end - start) for name, start, end in events]
    else:
        timed = [
            (e.name, e.self_cpu_time_total)
            for e in prof.events()
            if e.device_type == DeviceType.CPU and e.name.startswith("aten::")
        ]
        busy = sum(us for _, us in timed)
    by_kind: dict[str, float] = dict.fromkeys(KIND_NAMES, 0.0)
    by_name: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for name, us in timed:
        by_kind[kind_of(name)] += us
        by_name[name][0] += us
        by_name[name][1] += 1
    top = sorted(by_name.items(), key=lambda item: -item[1][0])[:TOP]
    per_step_ms = 1e-3 / steps
    return {
        "steps": steps,
        "wall_ms": wall_us * per_step_ms,
        "busy_share": min(1.0, busy / wall_us) if wall_us else None,
        "kernels": len(timed) / steps,
        "kernel_ms": {
            **{kind: us * per_step_ms for kind, us in by_kind.items()},
            "total": sum(by_kind.values()) * per_step_ms,
        },
        "top": [{"name": name, "ms": us * per_step_ms, "calls": calls / steps} for name, (us, calls) in top],
    }


def report(profiles: dict[str, dict], labels: dict[str, str], cuda: bool) -> dict[str, float]:
    """Print one table (runs as columns) and each run's top kernels; returns flat figures for RESULT."""
    runs = list(profiles)
    width = max(12, *(len(labels.get(r, r)) + 2 for r in runs))
    unit = "kernel" if cuda else "ATen op"
    print(
        f"\nper step, {profiles[runs[0]]['steps']} profiled steps after the timed ones ({unit} time in ms; "
        "the profiler slows the host, so busy shares are low for all runs alike):"
    )
    print(f"{'':<22}" + "".join(f"{labels.get(r, r):>{width}}" for r in runs))
    figures: dict[str, float] = {}
    rows = [(kind, lambda p, k=kind: p["kernel_ms"][k], "{:.2f}") for kind in KIND_NAMES]
    rows += [
        (f"{unit} total", lambda p: p["kernel_ms"]["total"], "{:.2f}"),
        ("wall", lambda p: p["wall_ms"], "{:.2f}"),
        ("busy share", lambda p: 100 * p["busy_share"], "{:.1f}%"),
        (f"{unit}s", lambda p: p["kernels"], "{:.0f}"),
    ]
    for label, get, fmt in rows:
        print(f"{label:<22}" + "".join(f"{fmt.format(get(profiles[r])):>{width}}" for r in runs))
    reference = profiles.get(REFERENCE)
    if reference is not None:
        print(
            f"against {labels.get(REFERENCE, REFERENCE)}, per step (ms; busy share in points): the gap's host "
            "side shows in wall minus kernel time, its device side in the kinds"
        )
        for run in runs:
            if run == REFERENCE:
                continue
            p = profiles[run]
            kinds = ", ".join(
                f"{kind} {p['kernel_ms'][kind] - reference['kernel_ms'][kind]:+.2f}" for kind in KIND_NAMES
            )
            idle = (p["wall_ms"] - p["kernel_ms"]["total"]) - (reference["wall_ms"] - reference["kernel_ms"]["total"])
            print(
                f"  {labels.get(run, run)}: wall {p['wall_ms'] - reference['wall_ms']:+.2f}, "
                f"{unit} total {p['kernel_ms']['total'] - reference['kernel_ms']['total']:+.2f} ({kinds}), "
                f"not in {unit}s {idle:+.2f}, busy {100 * (p['busy_share'] - reference['busy_share']):+.1f}"
            )
    for run in runs:
        p = profiles[run]
        figures[f"profile.{run}.kernel_ms"] = round(p["kernel_ms"]["total"], 3)
        figures[f"profile.{run}.wall_ms"] = round(p["wall_ms"], 3)
        figures[f"profile.{run}.busy_share"] = round(p["busy_share"], 4)
        figures[f"profile.{run}.kernels"] = round(p["kernels"], 1)
        for kind in KIND_NAMES:
            figures[f"profile.{run}.{kind}_ms"] = round(p["kernel_ms"][kind], 3)
        print(f"top {unit}s, {labels.get(run, run)}:")
        for k in p["top"]:
            print(f"  {k['ms']:8.2f} ms {k['calls']:6.0f} x  {k['name'][:100]}")
    return figures
