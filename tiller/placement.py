"""Where each process of `tiller run` goes: CPU cores on a CPU machine, devices on a GPU machine.

On a CPU machine every busy process gets its own cores: OS affinity for the whole process,
vLLM's OpenMP binding and torch's thread count on the same set. Unpinned vLLM engines
sharing two cores were measured 7x slower in total than pinned ones (platform notes).
When there are more busy processes than cores, the learner keeps a core of its own and
the others share what is left, round-robin; a rule judge (no model) is light and shares, with
the learner when no core is less loaded: an actor's start (importing vLLM, building its engine) is
the longest path to the first step, and on a CPU generation is the busier side afterwards (demo:
0.37 s generating to 0.09 s training per step), so the judge's own start and work go beside the
learner, not beside an actor (bench/startup.py: sharing the actor's core with the judge's start, the
actor took 2.5 s longer to import torch and Tiller, on the path to its engine).

`auto` also chooses how many actors: more vLLM engines than the cores left for them only share
those cores. Measured on a 2-core machine with configs/demo.yaml (30 steps, one core for the
learner and the rule judge): one actor on the other core took 0.31 s per step and trained its
first step 28 s after `tiller run` started; two actors sharing that core took 0.34 s per step
and 40 s (each imports vLLM and builds an engine, about 16 s of CPU, on the same core).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

CORES_ENV = "TILLER_CORES"  # set by `tiller run` for each child process: the cores it is pinned to
LENT_ENV = "TILLER_LENT_CORES"  # the learner's: actors' cores it may use (run.lend_actor_cores)


def own_cores() -> list[int]:
    """The cores `tiller run` pinned this process to (none when started by hand or unpinned)."""
    return [int(c) for c in os.environ.get(CORES_ENV, "").split(",") if c]


def lent_cores() -> list[int]:
    """The actors' cores this process was lent (none when started by hand or without lending)."""
    return [int(c) for c in os.environ.get(LENT_ENV, "").split(",") if c]


@dataclass(frozen=True)
class Slot:
    role: str  # "learner", "actor0", "judge0", ...
    cores: tuple[int, ...]  # empty: not pinned
    device: str | None = None  # CUDA_VISIBLE_DEVICES value on GPU machines
    lent: tuple[int, ...] = ()  # the learner: actors' cores it may use (run.lend_actor_cores)

    @property
    def affinity(self) -> set[int]:
        return set(self.cores) | set(self.lent)

    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        if self.cores:
            cpu_list = ",".join(map(str, self.cores))
            env.update({CORES_ENV: cpu_list, "VLLM_CPU_OMP_THREADS_BIND": cpu_list,
                        "OMP_NUM_THREADS": str(len(self.cores))})
        if self.lent:
            env[LENT_ENV] = ",".join(map(str, self.lent))
        if self.device is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.device
        return env


def lend_actor_cores(slots: list[Slot]) -> list[Slot]:
    """The learner may also run on the actors' cores (tiller/learner/lending.py decides how); not
    when a core is shared already, where lending would only add a third process to it."""
    learner = next(s for s in slots if s.role == "learner")
    actor_cores = [c for s in slots if s.role.startswith("actor") for c in s.cores]
    if not learner.cores or not actor_cores or len(set(actor_cores)) < len(actor_cores) \
            or set(actor_cores) & set(learner.cores):
        return slots
    actor_cores = sorted(actor_cores)
    return [Slot(s.role, s.cores, s.device, tuple(actor_cores)) if s is learner else s for s in slots]


def auto_actors(actors: int, cores: int) -> tuple[int, str | None]:
    """How many actors `placement: auto` starts on a CPU machine with `cores` cores, and why, when it
    starts fewer than asked: one per core left after the learner's, at least one."""
    useful = max(1, cores - 1)
    if actors <= useful:
        return actors, None
    return useful, (f"run.actors {actors} -> {useful}: {actors} vLLM engines would share {useful} core(s) after the "
                    f"learner's, and one engine with the whole batch generates as fast and starts sooner (measured: "
                    f"see tiller/placement.py); run.placement: manual keeps {actors}")


def gpu_count() -> int:
    """Visible CUDA devices, without importing torch (2 s) where there is no NVIDIA driver at all."""
    if not (os.path.exists("/proc/driver/nvidia") or os.path.exists("/dev/nvidia0")):
        return 0
    import torch

    return torch.cuda.device_count()


def roles(actors: int, judges: int) -> list[str]:
    return ["learner"] + [f"actor{i}" for i in range(actors)] + [f"judge{i}" for i in range(judges)]


def plan(actors: int, judges: int, heavy_judges: bool, cores: list[int] | None = None,
         gpus: int = 0, manual: dict[str, list[int]] | None = None) -> list[Slot]:
    names = roles(actors, judges)
    if manual is not None:
        missing = [r for r in names if r not in manual]
        if missing:
            raise ValueError(f"run.cores: no cores given for {', '.join(missing)} (placement: manual)")
        return [Slot(r, tuple(manual[r])) for r in names]
    if gpus > 0:  # learner on device 0, workers round-robin over the rest (or share 0 if alone)
        workers = [r for r in names if r != "learner"]
        pool = list(range(1, gpus)) or [0]
        return [Slot("learner", (), "0")] + [Slot(r, (), str(pool[i % len(pool)])) for i, r in enumerate(workers)]
    cores = sorted(cores if cores is not None else os.sched_getaffinity(0))
    heavy = [r for r in names if r.startswith(("learner", "actor")) or (heavy_judges and r.startswith("judge"))]
    light = [r for r in names if r not in heavy]
    assignment: dict[str, list[int]] = {r: [] for r in names}
    if len(cores) >= len(heavy):
        for i, core in enumerate(cores):  # spare cores go round-robin, the learner first
            assignment[heavy[i % len(heavy)]].append(core)
    else:
        assignment["learner"] = [cores[0]]
        shared = cores[1:] or cores
        for i, r in enumerate(heavy[1:]):
            assignment[r] = [shared[i % len(shared)]]
    load = {c: sum(c in v for v in assignment.values()) for c in cores}
    first = assignment["learner"][0]
    for r in light:  # light processes go to the least-loaded core; on a tie, the learner's
        core = min(cores, key=lambda c: (load[c], c != first, c))
        assignment[r] = [core]
        load[core] += 1
    return [Slot(r, tuple(assignment[r])) for r in names]


def describe(slots: list[Slot]) -> str:
    lines = ["placement:"]
    for s in slots:
        where = f"cores {','.join(map(str, s.cores))}" if s.cores else "unpinned"
        if s.device is not None:
            where = f"cuda:{s.device}"
        lines.append(f"  {s.role:<8} {where}" + (f" (lent cores {','.join(map(str, s.lent))}: "
                                                 "run.lend_actor_cores)" if s.lent else ""))
    counts: dict[int, int] = {}
    for s in slots:
        for c in s.cores:
            counts[c] = counts.get(c, 0) + 1
    shared = sorted(c for c, n in counts.items() if n > 1)
    if shared:
        lines.append(f"  (cores {','.join(map(str, shared))} are shared: more busy processes than cores)")
    return "\n".join(lines)
