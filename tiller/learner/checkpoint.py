"""Learner checkpoints: written atomically, found again by `tiller learner --resume runs/<name>`.

    runs/<name>/checkpoints/
        reference/          the frozen reference model (written once)
        step-40/            DeepSpeed checkpoint of policy (and critic) with optimizer state,
                            plus learner_state.json: step, policy version, data position,
                            RNG states, W&B run id
        latest              "step-40", replaced atomically after step-40/ is complete

A checkpoint is built in a hidden temporary directory and renamed into place, and `latest`
moves only after that, so a crash mid-write never leaves a partial checkpoint to pick up.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from tiller.learner.guard import assert_finite

KEEP = 2  # complete checkpoints kept on disk


def _rng_state() -> dict:
    py_version, py_state, py_gauss = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state().tolist(),
    }


def _set_rng_state(state: dict) -> None:
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))


def save(run_dir: Path, step: int, trainer, learner_state: dict) -> Path:
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    reference = root / "reference"
    if not reference.exists():
        tmp_ref = root / ".reference.tmp"
        shutil.rmtree(tmp_ref, ignore_errors=True)
        trainer.reference.save_pretrained(str(tmp_ref))
        os.rename(tmp_ref, reference)
    final, tmp = root / f"step-{step}", root / f".step-{step}.tmp"
    for bucket in trainer.weight_buckets(256 << 20):  # a checkpoint of NaN weights would poison a resume
        assert_finite(bucket, f"checkpoint step {step}")
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.engine.save_checkpoint(str(tmp), tag="policy")
    if trainer.critic is not None:
        trainer.critic.save_checkpoint(str(tmp), tag="critic")
    state = {**learner_state, "step": step, "rng": _rng_state()}
    (tmp / "learner_state.json").write_text(json.dumps(state))
    if final.exists():  # the same step again (a resumed run): never touch what `latest` may name
        final = root / f"step-{step}-{time.time_ns()}"
    os.rename(tmp, final)
    pointer = root / ".latest.tmp"
    pointer.write_text(final.name)
    os.replace(pointer, root / "latest")  # atomic: readers see the old or the new name, never half
    for old in _by_age(root)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _by_age(root: Path) -> list[Path]:
    """Complete checkpoint directories, oldest first: by step, then by when they were written."""
    return sorted(root.glob("step-*"), key=lambda p: (int(p.name.split("-")[1]), p.stat().st_mtime_ns))


def latest(run_dir: Path) -> Path | None:
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    path = run_dir / "checkpoints" / pointer.read_text().strip()
    return path if (path / "learner_state.json").exists() else None


def restore(path: Path, trainer) -> dict:
    """Load policy (and critic) with optimizer state into `trainer`; returns the learner state."""
    loaded, _ = trainer.engine.load_checkpoint(str(path), tag="policy")
    if loaded is None:
        raise RuntimeError(f"{path}: no DeepSpeed policy checkpoint in it")
    if trainer.critic is not None:
        trainer.critic.load_checkpoint(str(path), tag="critic")
    state = json.loads((path / "learner_state.json").read_text())
    _set_rng_state(state["rng"])
    return state


def reference_dir(run_dir: Path) -> Path | None:
    path = run_dir / "checkpoints" / "reference"
    return path if path.exists() else None
