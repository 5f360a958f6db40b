"""Checkpoints survive a full disk and a crash: a failed save leaves the previous checkpoint named and
whole and no partial folder behind, pruning makes room before the write, stale leftovers go at start,
the learner's loop counts a failed periodic save and trains on, and final/ is replaced whole."""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tiller.config import Config, LearnerConfig, ModelConfig
from tiller.learner import checkpoint, main
from tiller.training.errors import NonFiniteTraining


def disk_full() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


class FilesOnlyTrainer:
    """Writes what a checkpoint holds as small files; `full_at` makes the disk fill up partway."""

    critic = None
    thread_metrics = staticmethod(dict)  # no core lender

    def __init__(self):
        self.full_at: int | None = None  # the step whose save runs out of space after its first file
        self.saving = 0
        self.engine = SimpleNamespace(save_checkpoint=self._save_checkpoint)
        self.reference = SimpleNamespace(save_pretrained=lambda path: Path(path).mkdir(parents=True))

    def _save_checkpoint(self, path: str, tag: str) -> None:
        Path(path, tag).mkdir(parents=True)
        Path(path, tag, "model_states.pt").write_bytes(b"weights")
        if self.saving == self.full_at:
            raise disk_full()
        Path(path, tag, "optim_states.pt").write_bytes(b"moments")

    def weight_buckets(self, _bytes: int):
        yield [("w", torch.ones(2))]

    def set_lr(self, policy_lr: float, critic_lr: float) -> None:  # the learner's schedule sets it each step
        self.lrs = (policy_lr, critic_lr)


def save(run_dir: Path, step: int, trainer: FilesOnlyTrainer) -> Path:
    trainer.saving = step
    return checkpoint.save(run_dir, step, trainer, {"version": step})


def leftovers(run_dir: Path) -> list[str]:
    return sorted(p.name for p in [*run_dir.glob(".*"), *(run_dir / "checkpoints").glob(".*")])


def complete(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").glob("step-*"))


def test_a_full_disk_keeps_the_previous_checkpoint_and_removes_the_partial_one(tmp_path):
    trainer = FilesOnlyTrainer()
    save(tmp_path, 1, trainer)
    second = save(tmp_path, 2, trainer)
    trainer.full_at = 3
    with pytest.raises(OSError) as failed:
        save(tmp_path, 3, trainer)
    assert failed.value.errno == errno.ENOSPC
    assert checkpoint.latest(tmp_path) == second
    assert json.loads((second / "learner_state.json").read_text())["step"] == 2
    assert (second / "policy" / "optim_states.pt").exists()
    assert leftovers(tmp_path) == []  # `.step-3.tmp` used to stay, filling the disk a little more each time
    # KEEP = 2: step-1 went before step-3 was written (the disk needed room for 2, not 3); step-2, which
    # `latest` named, stayed until a successor was complete
    assert complete(tmp_path) == ["step-2"]
    trainer.full_at = None
    fourth = save(tmp_path, 4, trainer)
    assert checkpoint.latest(tmp_path) == fourth and complete(tmp_path) == ["step-2", "step-4"]
    save(tmp_path, 5, trainer)
    assert complete(tmp_path) == ["step-4", "step-5"]


def test_what_latest_names_is_kept_before_newer_unnamed_ones(tmp_path):
    """A crash after a rename but before `latest` moved leaves a newer complete checkpoint no one
    names; pruning keeps the named one, not the newest."""
    trainer = FilesOnlyTrainer()
    named = save(tmp_path, 2, trainer)
    save(tmp_path, 9, trainer)
    (tmp_path / "checkpoints" / "latest").write_text(named.name)  # as if the crash came before it moved
    save(tmp_path, 3, trainer)  # before its write: keep 1 (the named step-2), so step-9 goes
    assert complete(tmp_path) == ["step-2", "step-3"]


def test_stale_leftovers_are_removed_when_the_learner_starts(tmp_path, monkeypatch):
    trainer = FilesOnlyTrainer()
    cfg = Config(output_dir=str(tmp_path), name="run", model=ModelConfig(path=str(tmp_path / "no-model")))
    run_dir = cfg.run_dir
    kept = save(run_dir, 4, trainer)
    root = run_dir / "checkpoints"
    for stale in (root / ".step-8.tmp" / "policy", root / ".reference.tmp", root / ".step-2.del.tmp",
                  run_dir / ".final.tmp", root / "step-6"):  # step-6: half deleted by an older learner
        stale.mkdir(parents=True)
        (stale / "model_states.pt").write_bytes(b"half written")
    (root / ".latest.tmp").write_text("step-8")

    class Started(Exception):
        pass

    def past_the_cleaning(cfg):
        raise Started()

    monkeypatch.setattr(main, "prepare_model", past_the_cleaning)  # the learner's first expensive work
    with pytest.raises(Started):
        main.run(cfg, resume=True)
    assert leftovers(run_dir) == [] and complete(run_dir) == ["step-4"]
    assert checkpoint.latest(run_dir) == kept and (kept / "policy" / "optim_states.pt").exists()


def test_an_interrupted_replace_of_final_puts_the_old_one_back(tmp_path, monkeypatch):
    final = tmp_path / "final"
    final.mkdir()
    (final / "model.safetensors").write_text("old")
    new = tmp_path / ".final.tmp"
    new.mkdir()
    (new / "model.safetensors").write_text("new")
    renames = []
    real_rename = os.rename

    def die_on_second_rename(src, dst):  # the power goes between "old aside" and "new in"
        renames.append(dst)
        if len(renames) == 2:
            raise OSError("power cut")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", die_on_second_rename)
    with pytest.raises(OSError, match="power cut"):
        checkpoint.replace_dir(new, final)
    monkeypatch.setattr(os, "rename", real_rename)
    assert not final.exists()
    checkpoint.clean_stale(tmp_path)
    assert (final / "model.safetensors").read_text() == "old" and leftovers(tmp_path) == []
    new.mkdir()
    (new / "model.safetensors").write_text("new")
    checkpoint.replace_dir(new, final)
    assert (final / "model.safetensors").read_text() == "new" and leftovers(tmp_path) == []


def test_every_file_and_directory_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    events: list[tuple[str, object]] = []  # ("fsync", inode) and ("rename", destination name), in order
    real_fsync, real_rename, real_replace = os.fsync, os.rename, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.fstat(fd).st_ino)), real_fsync(fd)))
    monkeypatch.setattr(os, "rename", lambda a, b: (events.append(("rename", Path(b).name)), real_rename(a, b)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("rename", Path(b).name)), real_replace(a, b)))
    step = save(tmp_path, 1, FilesOnlyTrainer())
    root = step.parent

    def synced_before(renamed: str, path: Path) -> bool:  # inodes survive a rename
        return events.index(("fsync", path.stat().st_ino)) < events.index(("rename", renamed))

    inside = [step, *step.rglob("*")]
    assert len(inside) == 5  # step-1/, policy/, its two files, learner_state.json
    assert all(synced_before("step-1", path) for path in inside)
    assert synced_before("latest", root / "latest")  # the pointer's contents, before os.replace
    last_sync_of_root = max(i for i, e in enumerate(events) if e == ("fsync", root.stat().st_ino))
    assert last_sync_of_root > events.index(("rename", "latest"))  # and the rename itself, after


# --------------------------------------------------------------------------- the learner's loop


class Fakes:
    """Just enough of a learner around `main.train`: batches come at once, a step returns no metrics."""

    def __init__(self):
        self.rows: list[dict] = []
        self.server = SimpleNamespace(public={}, progress=None, consumed=lambda ids: None,
                                      coordinator_state=lambda: {"leases": []})
        self.sink = SimpleNamespace(wandb_id=None, log=self.rows.append)
        self.record = SimpleNamespace(flush=lambda: None)
        self.algorithm = SimpleNamespace(step=lambda *args: {}, needs="scores")


def test_a_failed_periodic_checkpoint_is_logged_counted_and_training_goes_on(tmp_path, monkeypatch, caplog):
    cfg = Config(output_dir=str(tmp_path), name="run",
                 learner=LearnerConfig(steps=4, checkpoint_every=1, sync_every=100))
    fakes, trainer = Fakes(), FilesOnlyTrainer()
    item = SimpleNamespace(prompt_id=0, policy_version=0, responses=[[3, 4]])
    monkeypatch.setattr(main, "take_batch", lambda *args: ([item], [item]))
    monkeypatch.setattr(main, "step_metrics", lambda *args: {})
    real_save = checkpoint.save

    def disk_full_at_step_2(run_dir, step, trainer, state):
        trainer.saving, trainer.full_at = step, 2
        return real_save(run_dir, step, trainer, state)

    monkeypatch.setattr(checkpoint, "save", disk_full_at_step_2)
    with caplog.at_level(logging.ERROR, logger=main.__name__):
        completions = SimpleNamespace(due=lambda step: False)
        failed = main.train(cfg, fakes.algorithm, trainer, None, fakes.server, fakes.sink, fakes.record, completions,
                            0, 0, 0, SimpleNamespace(is_set=lambda: False))
    assert failed == 1
    assert [row["system/checkpoint_failed_saves"] for row in fakes.rows] == [0, 0, 1, 1]  # from the row after it on
    assert "checkpoint of step 2 failed" in caplog.text and "No space left" in caplog.text
    assert checkpoint.latest(cfg.run_dir).name == "step-4" and leftovers(cfg.run_dir) == []


def test_non_finite_weights_still_stop_the_run_at_a_periodic_checkpoint(tmp_path):
    cfg = Config(output_dir=str(tmp_path), name="run")
    fakes, trainer = Fakes(), FilesOnlyTrainer()
    trainer.weight_buckets = lambda _bytes: iter([[("w", torch.tensor([float("nan")]))]])
    with pytest.raises(NonFiniteTraining):
        main.periodic_checkpoint(cfg, 1, 0, trainer, fakes.server, fakes.sink, fakes.record)


# --------------------------------------------------------------------------- real DeepSpeed engines


@pytest.mark.slow
def test_a_real_checkpoint_stays_restorable_after_a_full_disk_and_final_is_replaced_whole(tiny_policy_dir,
                                                                                         tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from tiller.learner.trainer import PolicyTrainer

    cfg = Config(model=ModelConfig(path=str(tiny_policy_dir)), learner=LearnerConfig(batch_size=4))
    trainer = PolicyTrainer(cfg, tiny_policy_dir)
    first = checkpoint.save(tmp_path, 1, trainer, {"version": 1})
    real_save = trainer.engine.save_checkpoint

    def fills_the_disk(path, tag):  # DeepSpeed's files are written, then the disk is full
        real_save(path, tag=tag)
        raise disk_full()

    monkeypatch.setattr(trainer.engine, "save_checkpoint", fills_the_disk)
    with pytest.raises(OSError):
        checkpoint.save(tmp_path, 2, trainer, {"version": 2})
    assert checkpoint.latest(tmp_path) == first and leftovers(tmp_path) == []
    assert checkpoint.restore(checkpoint.latest(tmp_path), trainer)["version"] == 1

    trainer.save(tmp_path / "final", tokenizer_dir=tiny_policy_dir)
    old = AutoModelForCausalLM.from_pretrained(str(tmp_path / "final")).state_dict()
    def save_pretrained_on_a_full_disk(*args, **kwargs):
        raise disk_full()

    monkeypatch.setattr(trainer.module, "save_pretrained", save_pretrained_on_a_full_disk)
    with pytest.raises(OSError):
        trainer.save(tmp_path / "final", tokenizer_dir=tiny_policy_dir)  # a failed final save still fails
    assert leftovers(tmp_path) == []
    kept = AutoModelForCausalLM.from_pretrained(str(tmp_path / "final")).state_dict()
    assert all(torch.equal(old[n], kept[n]) for n in old)
