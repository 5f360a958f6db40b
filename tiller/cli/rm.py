"""`tiller rm`: a reward model (one score, Bradley-Terry) trained on `rm.data` preference pairs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tiller.cli.common import DryRun, Overrides, finish_process, resolve, run_or_explain, setup_process


def rm(
    config: Annotated[Path, typer.Argument(help="YAML config, e.g. configs/offline/rm.yaml")],
    overrides: Overrides = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue runs/<name> from its latest checkpoint.")] = False,
    dry_run: DryRun = False,
) -> None:
    """Train a reward model (one score, Bradley-Terry) on rm.data {prompt, chosen, rejected} rows;
    runs/<name>/final/ serves the reward_model judge and PPO's learner.pg.critic_path."""
    from tiller.offline.data import check_sources

    cfg = resolve(config, overrides, dry_run, check=lambda c: check_sources(c.rm.data, "rm"))
    setup_process("rm")
    from tiller.offline.rm import run

    run_or_explain(run, cfg, resume=resume)
    finish_process(0)
