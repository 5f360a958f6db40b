"""Which precision a stage trains in: `learner.precision`, `train.precision` (and the generation dtype of
`rollout.dtype`, `eval.generation.dtype`, which take the same decision in vLLM's words).

    resolve_precision("auto")     # bf16 on a GPU, fp32 on a CPU
    resolve_precision("fastest")  # bf16 wherever this machine multiplies bf16 faster than fp32, else fp32

`auto` keeps a CPU in fp32: on most CPUs bf16 matmuls are emulated and slower, and fp32 keeps the tiny
demos' sampling and training on-policy to the last digit. `fastest` asks the machine instead: CPUs with
native bf16 (AVX512-BF16, AMX, Arm's BF16 extension) multiply it several times faster than fp32 (4x on the
2-core AMD EPYC this project is measured on; an SFT step of SmolLM2-135M 9.5 s -> 3.7 s), so a real model
on such a CPU should train in bf16 as it would on a GPU. A flag can say an instruction exists; only a
measurement says it is fast (a hypervisor may hide it, a library may not use it), so `fastest` times one
matmul in each dtype (about 0.1 s, once per process) and takes bf16 only if it is at least 1.5x faster.
DeepSpeed's bf16 keeps fp32 master weights and optimizer states either way.
"""

from __future__ import annotations

import functools
import sys
import time

import torch

PRECISIONS = ("auto", "fastest", "fp32", "bf16")
FASTER_BY = 1.5  # bf16 must beat fp32 by this much on the probe to be chosen: noise never flips the decision


def resolve_precision(precision: str) -> str:
    """`auto` / `fastest` / `fp32` / `bf16` -> "fp32" or "bf16" (see the module's docstring)."""
    if precision in ("fp32", "bf16"):
        return precision
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
    if torch.cuda.is_available():
        return "bf16"
    if precision == "auto":
        return "fp32"
    return _fastest_on_this_cpu()


@functools.cache
def _fastest_on_this_cpu() -> str:
    """`fastest` on a CPU, decided and said once per process (a stage's log shows what it trained in, and why)."""
    speedup = cpu_bf16_speedup()
    choice = "bf16" if speedup >= FASTER_BY else "fp32"
    print(f"precision: fastest -> {choice} (a bf16 matmul on this CPU runs at {speedup:.1f}x fp32's; bf16 is "
          f"taken from {FASTER_BY}x)", file=sys.stderr, flush=True)  # stderr: a command's stdout may be its result
    return choice


def generation_dtype(dtype: str) -> str:
    """`rollout.dtype` / `eval.generation.dtype` -> "float32" or "bfloat16"; `fastest` as for training."""
    if dtype in ("float32", "bfloat16"):
        return dtype
    return {"fp32": "float32", "bf16": "bfloat16"}[resolve_precision(dtype)]


@functools.cache
def cpu_bf16_speedup(size: int = 768, repeats: int = 8) -> float:
    """bf16 matmul throughput over fp32's on this CPU, best of `repeats` for each (the best is the least
    disturbed by whatever else runs)."""
    def best(dtype: torch.dtype) -> float:
        a = torch.randn(size, size, dtype=dtype)
        b = torch.randn(size, size, dtype=dtype)
        a @ b  # the first call allocates and picks a kernel
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
        return min(times)

    return best(torch.float32) / best(torch.bfloat16)
