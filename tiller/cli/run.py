"""`tiller run`: the whole system on this machine, each part its own OS process.

Plans placement (printed), starts the learner, the rollout actors and the judges as
separate processes on loopback, streams the learner's progress, and stops everything
when the learner finishes or a part fails. Worker logs go to runs/<name>/logs/.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from tiller.cli import placement
from tiller.cli.common import DryRun, Overrides, resolve
from tiller.config import Config, dump_config


def _spawn(slot: placement.Slot, args: list[str], log_path: Path | None) -> subprocess.Popen:
    env = {**os.environ, **slot.env(), "PYTHONUNBUFFERED": "1"}
    out = log_path.open("w") if log_path else None
    cores = set(slot.cores)
    return subprocess.Popen(
        [sys.executable, "-m", "tiller", *args], env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
        preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None,
    )


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(processes: dict[str, subprocess.Popen], timeout: float = 10.0) -> None:
    for p in processes.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in processes.values():
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def launch(cfg: Config) -> int:
    """Start every part, wait for the learner, return the exit code of the run."""
    from tiller.learner.main import prepare_model

    run_dir = cfg.run_dir
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    launch_config = run_dir / "launch.yaml"
    launch_config.write_text(dump_config(cfg))
    prepare_model(cfg)  # once, here, so the children never race to build it
    rc = cfg.run
    import torch

    slots = placement.plan(
        rc.actors, rc.judges, heavy_judges=cfg.judge.kind != "rule",  # a model in the judge needs cores
        gpus=torch.cuda.device_count(), manual=rc.cores if rc.placement == "manual" else None,
    ) if rc.placement != "off" else [placement.Slot(r, ()) for r in placement.roles(rc.actors, rc.judges)]
    typer.echo(placement.describe(slots))
    processes: dict[str, subprocess.Popen] = {}
    logs: dict[str, Path] = {}
    for slot in slots:
        command = "learner" if slot.role == "learner" else "actor" if slot.role.startswith("actor") else "judge"
        args = [command, "--config", str(launch_config)]
        if command != "learner":
            args += ["--id", slot.role]
            logs[slot.role] = run_dir / "logs" / f"{slot.role}.log"
        processes[slot.role] = _spawn(slot, args, logs.get(slot.role))
    typer.echo(f"started {len(processes)} processes; worker logs in {run_dir / 'logs'}")
    return _supervise(cfg, processes, logs)


def _supervise(cfg: Config, processes: dict[str, subprocess.Popen], logs: dict[str, Path]) -> int:
    learner = processes["learner"]
    deadline = time.monotonic() + cfg.run.timeout_s
    try:
        while learner.poll() is None:
            if time.monotonic() > deadline:
                typer.echo(f"run.timeout_s ({cfg.run.timeout_s:.0f} s) reached; stopping", err=True)
                _stop(processes)
                return 1
            for kind in ("actor", "judge"):
                group = {r: p for r, p in processes.items() if r.startswith(kind)}
                if group and all(p.poll() not in (None, 0) for p in group.values()):
                    for role in group:
                        typer.echo(f"--- {role} failed; last lines of {logs[role]}:\n{_tail(logs[role])}", err=True)
                    _stop(processes)
                    return 1
            time.sleep(0.5)
        workers = {r: p for r, p in processes.items() if r != "learner"}
        grace = time.monotonic() + cfg.learner.shutdown_grace_s + 30
        while any(p.poll() is None for p in workers.values()) and time.monotonic() < grace:
            time.sleep(0.2)
        _stop(workers)
    except KeyboardInterrupt:
        _stop(processes)
        return 130
    return learner.returncode or 0


def run(
    config: Annotated[Path, typer.Argument(help="YAML config, e.g. configs/demo.yaml")],
    overrides: Overrides = None,
    dry_run: DryRun = False,
    actors: Annotated[Optional[int], typer.Option(help="Rollout actors to start (run.actors).")] = None,
    judges: Annotated[Optional[int], typer.Option(help="Judge processes to start (run.judges).")] = None,
) -> None:
    """Run learner, actors and judges together on this machine."""
    extra = [f"run.actors={actors}"] * (actors is not None) + [f"run.judges={judges}"] * (judges is not None)
    cfg = resolve(config, (overrides or []) + extra, dry_run)
    raise typer.Exit(launch(cfg))
