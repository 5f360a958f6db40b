"""Checkpoints for every stage: durable and atomic, found again on `--resume runs/<name>`.

    runs/<name>/checkpoints/
        reference/          a frozen model the stage needs again on resume (written once; `frozen=`)
        step-40/            one DeepSpeed checkpoint per trained engine, under its tag ("policy",
                            "critic", ...), with optimizer state, plus learner_state.json: the stage's
                            own state (step, data position, W&B run id, ...) and the RNG states
        latest              "step-40", replaced atomically after step-40/ is complete and on disk
    runs/<name>/final/      the trained model (`from_pretrained` loads it), replaced whole

    path = save(run_dir, 40, {"policy": engine}, {"epoch": 1}, weights=model.weight_buckets(256 << 20))
    state = restore(latest(run_dir), {"policy": engine})   # the dict passed to save, plus "step" and "rng"

What goes into a checkpoint is the caller's (the online learner's is learner/checkpoint.py); this file
owns the directory protocol. What a crash, a power cut or a full disk can and cannot do:

- Torn checkpoints are never named. Each directory is built under a hidden name (`.step-40.tmp`),
  every file and directory in it is fsynced, it is renamed into place and its parent fsynced; only
  then is `latest` rewritten (a fsynced `.latest.tmp`, `os.replace`, the directory fsynced). After a
  power cut `latest` names the previous complete checkpoint or the new complete one.
- The disk needs room for KEEP checkpoints, not KEEP + 1. The rule: before a write, keep the one
  `latest` names and the newest others up to KEEP - 1 in all, and delete the rest; after the new one is
  complete and `latest` names it, prune to KEEP the same way. What `latest` names is never deleted
  before its successor is complete, so a failed write leaves at least that one (KEEP = 1 therefore
  needs room for two while writing).
- Leftovers are removed. A failed write or delete leaves only hidden `.*.tmp` entries (an old
  checkpoint is renamed to `.step-N.del.tmp` before it is deleted, so a half-deleted one never looks
  complete); `clean_stale` removes them, and is run when a stage starts and after every save.
- `replace_dir` swaps a whole directory in (final/): the new one written aside and fsynced, the old
  moved to `.final.old.tmp`, the new renamed in, the old deleted. A crash between the two renames
  leaves no final/ but the old one aside, and `clean_stale` (or the next `replace_dir`) moves it back.
- `save` raises on any failure, after removing what it half wrote. The online learner's periodic saves
  log and count that and train on (learner/main.py); the pre-emption and final saves fail the run.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from tiller.training.guard import assert_finite

KEEP = 2  # complete checkpoints kept on disk (and the most a save needs room for)
FINAL_NAME = "final"
# Its presence marks a step directory complete. The name is the online learner's, from before the offline
# stages; kept, so that checkpoints written before the training core was cut out still resume.
STATE_NAME = "learner_state.json"

log = logging.getLogger(__name__)


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


# --------------------------------------------------------------------------- durability


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename into it, a new file) durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as e:  # some filesystems (certain FUSE and network mounts) cannot fsync a directory
        if e.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under `root`, and `root` itself: the contents must be on disk
    before a rename publishes them, or a power cut can leave a complete-looking name over torn files."""
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(folder))


def _write_durably(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def publish_dir(tmp: Path, dest: Path) -> None:
    """Rename the complete directory `tmp` to the new name `dest`, durably."""
    fsync_tree(tmp)
    os.rename(tmp, dest)
    fsync_dir(dest.parent)


def _aside(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.old.tmp"


def _restore_aside(dest: Path) -> None:
    """Undo a `replace_dir` cut short between its two renames: the old directory goes back."""
    if not dest.exists() and _aside(dest).is_dir():
        log.warning("%s: missing, restoring the copy moved aside before an interrupted replace", dest)
        os.rename(_aside(dest), dest)
        fsync_dir(dest.parent)


def replace_dir(tmp: Path, dest: Path) -> None:
    """Put the complete directory `tmp` at `dest`, replacing any old one: readers find the old or the
    new one whole (or, in a crash between the two renames, the old one aside, which is moved back)."""
    fsync_tree(tmp)
    _restore_aside(dest)
    old = _aside(dest)
    _remove(old)
    if dest.exists():
        os.rename(dest, old)
    os.rename(tmp, dest)
    fsync_dir(dest.parent)
    _remove(old)


def _remove(path: Path) -> None:
    """Delete a file or a directory tree; never raises (a leftover is removed by the next clean)."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists() or path.is_symlink():
            path.unlink()
    except OSError as e:
        log.warning("could not remove %s: %s", path, e)


# --------------------------------------------------------------------------- the checkpoint directory


def clean_stale(run_dir: Path) -> list[Path]:
    """Remove what failed writes and deletes left: every hidden `.*.tmp` under checkpoints/, any
    `step-*` without its state file that `latest` does not name, and final/'s own temporary
    folders (after moving an old final/ back if a replace was cut short). Returns what was removed."""
    final = run_dir / FINAL_NAME
    try:
        _restore_aside(final)
    except OSError as e:
        log.warning("%s: could not restore the old copy: %s", final, e)
    stale = [p for p in (run_dir / f".{FINAL_NAME}.tmp", _aside(final)) if p.exists()]
    root = run_dir / "checkpoints"
    if root.is_dir():
        stale += [p for p in root.glob(".*.tmp")]
        named = _named(root)
        stale += [p for p in root.glob("step-*") if not (p / STATE_NAME).exists() and p != named]
    for path in stale:
        _remove(path)
    if stale:
        log.info("removed stale checkpoint leftovers: %s", ", ".join(p.name for p in stale))
    return stale


def _named(root: Path) -> Path | None:
    """The directory `latest` names (complete or not), or None."""
    try:
        return root / (root / "latest").read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None


def _by_age(root: Path) -> list[Path]:
    """Complete checkpoint directories, oldest first: by step, then by when they were written."""
    complete = [p for p in root.glob("step-*") if (p / STATE_NAME).exists()]
    return sorted(complete, key=lambda p: (int(p.name.split("-")[1]), p.stat().st_mtime_ns))


def _prune(root: Path, keep: int) -> None:
    """Delete complete checkpoints beyond `keep`: the one `latest` names is kept first (whatever `keep`),
    then the newest others."""
    named = _named(root)
    ranked = sorted(_by_age(root), key=lambda p: p == named)[::-1]  # `latest`'s first, then newest first
    kept = max(keep, 1 if named in ranked else 0)
    for old in ranked[kept:]:
        doomed = root / f".{old.name}.del.tmp"  # renamed first: a half-deleted one never looks complete
        os.rename(old, doomed)
        _remove(doomed)


def _save_frozen(root: Path, name: str, model) -> None:
    """`model.save_pretrained` into checkpoints/<name>/, once: a frozen model never changes."""
    done = root / name
    if done.exists():
        return
    tmp = root / f".{name}.tmp"
    _remove(tmp)
    model.save_pretrained(str(tmp))
    publish_dir(tmp, done)


def _write_step(root: Path, step: int, engines: Mapping[str, Any], state: dict) -> Path:
    tmp = root / f".step-{step}.tmp"
    _remove(tmp)
    for tag, engine in engines.items():
        engine.save_checkpoint(str(tmp), tag=tag)
    full = {**state, "step": step, "rng": _rng_state()}
    (tmp / STATE_NAME).write_text(json.dumps(full))  # its presence marks the directory complete
    final = root / f"step-{step}"
    if final.exists():  # the same step again (a resumed run): never touch what `latest` may name
        final = root / f"step-{step}-{time.time_ns()}"
    publish_dir(tmp, final)
    return final


def _point_latest(root: Path, name: str) -> None:
    pointer = root / ".latest.tmp"
    _write_durably(pointer, name)
    os.replace(pointer, root / "latest")  # atomic: readers see the old or the new name, never half
    fsync_dir(root)


def save(run_dir: Path, step: int, engines: Mapping[str, Any], state: dict, *,
         frozen: Mapping[str, Any] | None = None, weights: Iterable[list[tuple[str, torch.Tensor]]] = ()) -> Path:
    """Write checkpoint `step` and point `latest` at it; raises on failure, leaving the previous
    checkpoint named and whole and no partial folder behind.

    `engines`: DeepSpeed engines by tag (`save_checkpoint(path, tag=...)` each, optimizer state included);
    `state`: JSON-able, given back by `restore`; `frozen`: models by directory name, written once each
    (`save_pretrained`); `weights`: (name, tensor) buckets checked first, since a checkpoint of NaN weights
    would poison a resume (`ModelEngine.weight_buckets`)."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    for bucket in weights:
        assert_finite(bucket, f"checkpoint step {step}")
    try:
        for name, model in (frozen or {}).items():
            _save_frozen(root, name, model)
        _prune(root, KEEP - 1)  # room for the new one, before it is written
        final = _write_step(root, step, engines, state)
        _point_latest(root, final.name)
        _prune(root, KEEP)
    finally:
        clean_stale(run_dir)  # a failed write's partial folder, which a full disk could not afford to keep
    return final


def latest(run_dir: Path) -> Path | None:
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    path = run_dir / "checkpoints" / pointer.read_text().strip()
    return path if (path / STATE_NAME).exists() else None


def restore(path: Path, engines: Mapping[str, Any]) -> dict:
    """Load each engine (with optimizer state) from its tag in checkpoint `path` and the RNG states;
    returns the state `save` was given, plus "step"."""
    for tag, engine in engines.items():
        loaded, _ = engine.load_checkpoint(str(path), tag=tag)
        if loaded is None:  # DeepSpeed only warns: training on would start that model afresh
            raise RuntimeError(f"{path}: no DeepSpeed {tag} checkpoint in it")
    state = json.loads((path / STATE_NAME).read_text())
    _set_rng_state(state["rng"])
    return state


def frozen_dir(run_dir: Path, name: str) -> Path | None:
    """checkpoints/<name>/ as `save(frozen={name: ...})` wrote it, or None."""
    path = run_dir / "checkpoints" / name
    return path if path.exists() else None
