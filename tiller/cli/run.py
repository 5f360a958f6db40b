"""`tiller run`: the whole system on this machine, each part its own OS process.

Plans placement (printed), starts the learner, the rollout actors and the judges as
separate processes on loopback and streams the learner's progress. It supervises: an actor or
judge that dies is started again in its slot (after a back-off that doubles, up to
`run.max_restarts` times per worker), and the learner hands the dead one's work on meanwhile.
The learner hears of a death at once (WorkerExited), so the dead worker's leases and judge tasks go
out again without waiting for its heartbeats to be missed; a worker the learner declared stuck exits
(code 75) and is restarted the same way. A worker that fails in a way a restart would repeat (a config
error, weights that do not fit its model, or the same last line twice within `run.healthy_after_s` of
a start) ends the run with its message; one that ran for `run.healthy_after_s` before dying starts
its restart count again. The run ends when the learner ends, or fails when the learner dies, every
worker of a kind has used up its restarts, or `run.timeout_s` (none unless set) runs out. Worker logs go to
runs/<name>/logs/ (a restart appends).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Optional

import typer

from tiller import STARTED, timeline
from tiller import placement
from tiller.cli.common import DETERMINISTIC_EXITS, DryRun, Overrides, resolve, run_or_explain
from tiller.cli.preflight import check_before_start, check_setup
from tiller.config import Config, ConfigError, dump_config
from tiller.timeline import STARTED_ENV


def _spawn(slot: placement.Slot, args: list[str], log_path: Path | None, append: bool = False) -> subprocess.Popen:
    # every part measures the run's start from this command's (time/first_step_s)
    env = {**os.environ, **slot.env(), "PYTHONUNBUFFERED": "1", STARTED_ENV: os.environ.get(STARTED_ENV, str(STARTED))}
    out = log_path.open("a" if append else "w") if log_path else None
    cores = slot.affinity
    return subprocess.Popen(
        [sys.executable, "-m", "tiller", *args], env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
        preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None,
    )


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Child:
    """One supervised process of the run, and what it takes to start it again."""

    role: str
    slot: placement.Slot
    args: list[str]
    log: Path | None
    process: subprocess.Popen
    restarts: int = 0
    restart_at: float | None = None  # a restart is due then
    gave_up: bool = False
    started_at: float = field(default_factory=time.monotonic)  # of the process now in the slot
    last_early_failure: str | None = None  # the last log line of its previous death soon after a start

    @property
    def kind(self) -> str:
        return "learner" if self.role == "learner" else "actor" if self.role.startswith("actor") else "judge"


def _stop(children: list[Child], timeout: float = 10.0) -> None:
    for child in children:
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()


def launch(cfg: Config) -> int:
    """Start every part, supervise them until the learner ends, return the exit code of the run."""
    from tiller.models import prepare_model

    check_setup(cfg)  # the bind, the model directories, the judge's rules and files: nothing built yet
    run_dir = cfg.run_dir
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    launch_config = run_dir / "launch.yaml"
    launch_config.write_text(dump_config(cfg))
    (run_dir / timeline.FILE).unlink(missing_ok=True)  # this run's milestones only
    timeline.mark(run_dir, "launcher", "configured")
    prepare_model(cfg)  # once, here, so the children never race to build it
    started = time.monotonic()
    rows = check_before_start(cfg)  # what the parts would refuse after their engines start, refused now
    timeline.mark(run_dir, "launcher", "model and prompt rows checked")
    slots = _placement(cfg)
    learner_slot = next(s for s in slots if s.role == "learner")
    if learner_slot.cores:  # what this process still does (the preflight, supervising) goes beside the learner
        os.sched_setaffinity(0, set(learner_slot.cores))
    # Every process at once: an actor's start (importing vLLM, building its engine) is the longest path to
    # the first step, and the learner's is next (importing torch and DeepSpeed, building its models). The
    # learner tokenizes every prompt before it builds anything, so a prompt its tokenizer refuses (empty, too
    # long, a conversation without a chat template) ends it in seconds with one line, and the workers with it
    # (`_watch`). Until 2026-12-07 the launcher tokenized them itself before starting the learner: 9.4 s of a
    # SmolLM2 run's first step, spent on work the learner then did again.
    children = [_child(cfg, slot, launch_config) for slot in slots if slot.role != "learner"]
    timeline.mark(run_dir, "launcher", "workers started")
    typer.echo(f"preflight: config, bind, models, judge rules and files and {len(rows)} prompt rows checked "
               f"in {time.monotonic() - started:.1f} s")
    children.insert(0, _child(cfg, learner_slot, launch_config))
    timeline.mark(run_dir, "launcher", "learner started")
    pids = ", ".join(f"{c.role} {c.process.pid}" for c in children)
    typer.echo(f"started {len(children)} processes ({pids}); worker logs in {run_dir / 'logs'}")
    try:
        return _supervise(cfg, children)
    except KeyboardInterrupt:
        _stop(children)
        return 130


def _placement(cfg: Config) -> list[placement.Slot]:
    """The printed plan: which cores (or GPU) each process gets."""
    rc = cfg.run
    gpus, actors = placement.gpu_count(), rc.actors
    if rc.placement == "auto" and gpus == 0:
        actors, why = placement.auto_actors(rc.actors, len(os.sched_getaffinity(0)))
        if why:
            typer.echo(f"placement: {why}")
    available = os.sched_getaffinity(0)
    absent = sorted({c for cores in rc.cores.values() for c in cores} - available) if rc.placement == "manual" else []
    if absent:  # the machine, not the file: known only here
        raise ConfigError(f"run.cores: core {', '.join(map(str, absent))} is not available to this process "
                          f"(it may use {', '.join(map(str, sorted(available)))})")
    slots = placement.plan(
        actors, rc.judges, heavy_judges=cfg.judge.kind != "rule",  # a model in the judge needs cores
        gpus=gpus, manual=rc.cores if rc.placement == "manual" else None,
    ) if rc.placement != "off" else [placement.Slot(r, ()) for r in placement.roles(actors, rc.judges)]
    if rc.lend_actor_cores != "off" and gpus == 0 and rc.placement != "off":
        slots = placement.lend_actor_cores(slots)
    typer.echo(placement.describe(slots))
    return slots


def _child(cfg: Config, slot: placement.Slot, launch_config: Path) -> Child:
    command = "learner" if slot.role == "learner" else "actor" if slot.role.startswith("actor") else "judge"
    args = [command, "--config", str(launch_config)] + (["--id", slot.role] if command != "learner" else [])
    log = cfg.run_dir / "logs" / f"{slot.role}.log" if command != "learner" else None
    return Child(slot.role, slot, args, log, _spawn(slot, args, log))


def _supervise(cfg: Config, children: list[Child]) -> int:
    notify = LearnerNotice(cfg)
    try:
        return _watch(cfg, children, notify)
    finally:
        notify.close()


def _watch(cfg: Config, children: list[Child], notify: LearnerNotice) -> int:
    learner = next(c for c in children if c.role == "learner")
    workers = [c for c in children if c is not learner]
    limit = cfg.run.timeout_s or None  # null or 0: the run ends with the learner, however long it trains
    deadline = time.monotonic() + limit if limit else None
    while learner.process.poll() is None:
        if deadline is not None and time.monotonic() > deadline:
            typer.echo(f"run.timeout_s ({limit:g} s) reached; stopping every process", err=True)
            _stop(children)
            return 1
        try:
            for child in workers:
                _tend(cfg, child, notify)
        except WorkerCannotStart as exc:
            typer.echo(f"--- stopping the run: {exc}", err=True)
            _stop(children)
            return 1
        for kind in ("actor", "judge"):
            group = [c for c in workers if c.kind == kind]
            if group and all(c.gave_up for c in group):
                typer.echo(f"every {kind} failed {cfg.run.max_restarts + 1} times; stopping the run", err=True)
                _stop(children)
                return 1
        try:  # wakes the moment the learner exits (a plain sleep would add up to its length to every run)
            learner.process.wait(0.5)
        except subprocess.TimeoutExpired:
            pass
    learner_done = time.monotonic()
    timeline.mark(cfg.run_dir, "launcher", "learner exited")
    if learner.process.returncode:  # it failed (its own line says why): no worker will hear that training ended
        _stop(workers, timeout=5.0)
    grace = learner_done + cfg.learner.shutdown_grace_s + 30
    while any(c.process.poll() is None for c in workers) and time.monotonic() < grace:
        time.sleep(0.1)
    _stop(workers)
    timeline.mark(cfg.run_dir, "launcher", "every process exited")
    # the tail of a run, so it can be measured: workers leave once they hear training finished
    typer.echo(f"run: every process exited {time.time() - STARTED:.1f} s after start "
               f"(workers {time.monotonic() - learner_done:.1f} s after the learner)")
    return learner.process.returncode or 0


class WorkerCannotStart(Exception):
    """A worker failed in a way a restart would repeat: the run ends with its message."""


def _tend(cfg: Config, child: Child, notify=None) -> None:
    """Restart a worker that died (a clean exit 0 means the learner told it to stop: leave it). `notify(role,
    code)` tells the learner at once, so the dead worker's work goes out again without waiting for its
    heartbeats to be missed. Raises WorkerCannotStart for a failure a restart would only repeat."""
    now = time.monotonic()
    if child.restart_at is not None:
        if now >= child.restart_at:
            child.restart_at = None
            child.process = _spawn(child.slot, child.args, child.log, append=True)
            child.started_at = time.monotonic()
            typer.echo(f"--- {child.role} restarted (pid {child.process.pid}, restart {child.restarts} of "
                       f"{cfg.run.max_restarts})", err=True)
        return
    code = child.process.poll()
    if code in (None, 0) or child.gave_up:
        return
    if notify is not None:
        notify(child.role, code)
    tail = _tail(child.log) if child.log else ""
    _give_up_if_deterministic(cfg, child, code, tail, now)
    if now - child.started_at >= cfg.run.healthy_after_s:  # it had been working: a fresh failure, a fresh count
        child.restarts = 0
    if child.restarts >= cfg.run.max_restarts:
        child.gave_up = True
        typer.echo(f"--- {child.role} died (exit {code}) with no restarts left; last lines of {child.log}:\n{tail}",
                   err=True)
        return
    backoff = min(cfg.run.restart_backoff_s * 2 ** child.restarts, 60.0)
    child.restarts += 1
    child.restart_at = now + backoff
    typer.echo(f"--- {child.role} died (exit {code}); restarting it in {backoff:.0f} s "
               f"({child.restarts} of {cfg.run.max_restarts}); last lines of {child.log}:\n{tail}", err=True)


def _give_up_if_deterministic(cfg: Config, child: Child, code: int, tail: str, now: float) -> None:
    """A config error, weights that do not fit (their exit codes), or the same last words twice in a row within
    `run.healthy_after_s` of a start: starting it again would fail again, so the run ends with the message."""
    last_line = tail.strip().splitlines()[-1] if tail.strip() else f"exit {code}"
    early = now - child.started_at < cfg.run.healthy_after_s
    repeated = early and child.last_early_failure == last_line
    child.last_early_failure = last_line if early else None
    if code in DETERMINISTIC_EXITS or repeated:
        why = "a failure a restart cannot fix" if code in DETERMINISTIC_EXITS else "the same failure twice at start"
        raise WorkerCannotStart(f"{child.role} failed (exit {code}): {last_line}\n({why}; last lines of "
                                f"{child.log}:\n{tail})")


class LearnerNotice:
    """Tells the learner that a worker's process ended (WorkerExited), from the supervisor: fire and forget."""

    def __init__(self, cfg: Config):
        self.cfg, self._client = cfg, None

    def __call__(self, role: str, code: int) -> None:
        from tiller.protocol.messages import WorkerExited
        from tiller.protocol.transport import LearnerClient

        if self._client is None:
            self._client = LearnerClient(self.cfg.learner.address, security=self.cfg.security)
        self._client.send(WorkerExited(role, int(code)))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def run(
    config: Annotated[Path, typer.Argument(help="YAML config, e.g. configs/demo.yaml")],
    overrides: Overrides = None,
    dry_run: DryRun = False,
    actors: Annotated[Optional[int], typer.Option(help="Rollout actors to start (run.actors).")] = None,
    judges: Annotated[Optional[int], typer.Option(help="Judge processes to start (run.judges).")] = None,
) -> None:
    """Run learner, actors and judges together on this machine: check the setup first, place each
    process on its own cores (or GPU), restart actors and judges that die, stream the learner's progress."""
    options = {f"run.actors={actors}": f"--actors {actors}"} if actors is not None else {}
    options |= {f"run.judges={judges}": f"--judges {judges}"} if judges is not None else {}
    cfg = resolve(config, (overrides or []) + list(options), dry_run, check=check_setup, labels=options)
    raise typer.Exit(run_or_explain(launch, cfg))
