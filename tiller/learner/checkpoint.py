"""The online learner's checkpoints, found again by `tiller learner --resume runs/<name>`.

    runs/<name>/checkpoints/
        reference/      the frozen reference model (written once)
        step-40/        policy/ (and PPO's critic/) with optimizer state, plus learner_state.json:
                        step, policy version, data position, RNG states, W&B run id
        latest          "step-40"

What a checkpoint of the online stage holds is said here; how it is written (durably, atomically, pruned
to KEEP, leftovers cleaned) is the training core's directory protocol, `tiller/training/checkpoint.py`,
whose docstring says what a crash, a power cut or a full disk can and cannot do. `latest`, `clean_stale`
and `replace_dir` are that protocol's own functions, named here too so that main.py reads one module.
"""

from __future__ import annotations

from pathlib import Path

from tiller.training import checkpoint as core
from tiller.training.checkpoint import clean_stale, latest, replace_dir

__all__ = ["clean_stale", "latest", "reference_dir", "replace_dir", "restore", "save"]

REFERENCE = "reference"


def _engines(trainer) -> dict:
    """The trained engines by checkpoint tag: the policy, and the critic when there is one."""
    engines = {"policy": trainer.engine}
    if trainer.critic is not None:
        engines["critic"] = trainer.critic
    return engines


def save(run_dir: Path, step: int, trainer, learner_state: dict) -> Path:
    """Write checkpoint `step` of a `PolicyTrainer` and point `latest` at it; raises on failure, leaving the
    previous checkpoint named and whole (and non-finite weights are never written)."""
    return core.save(run_dir, step, _engines(trainer), learner_state, frozen={REFERENCE: trainer.reference},
                     weights=trainer.weight_buckets(256 << 20))


def restore(path: Path, trainer) -> dict:
    """Load policy (and critic) with optimizer state into `trainer`; returns the learner state."""
    return core.restore(path, _engines(trainer))


def reference_dir(run_dir: Path) -> Path | None:
    """The reference a resumed run must compare with: the one the run began with, not `model.path` now."""
    return core.frozen_dir(run_dir, REFERENCE)
