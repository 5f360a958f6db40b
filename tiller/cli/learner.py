"""`tiller learner`: start the learner (coordinator, weight server, DeepSpeed training loop)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tiller.cli.common import ConfigOption, DryRun, Overrides, finish_process, resolve, run_or_explain, setup_process


def learner(
    config: ConfigOption = None,
    overrides: Overrides = None,
    resume: Annotated[Optional[Path], typer.Option(
        "--resume", help="Continue runs/<name> from its latest checkpoint (its config.yaml unless --config).")] = None,
    dry_run: DryRun = False,
) -> None:
    """Train with learner.algorithm (online_dpo, ppo, grpo or rloo): lease prompts to actors, route their
    rollouts to judges, train on what comes back, publish new weights to the actors."""
    if resume is not None and config is None:
        config = resume / "config.yaml"
        if not config.exists():
            typer.echo(f"--resume: {config} not found (is {resume} a run directory?)", err=True)
            raise typer.Exit(2)
    cfg = resolve(config, overrides, dry_run)
    if resume is not None and cfg.run_dir.resolve() != resume.resolve():
        typer.echo(f"--resume {resume} but the config's run directory is {cfg.run_dir}", err=True)
        raise typer.Exit(2)
    setup_process("learner")
    from tiller.learner.main import run

    run_or_explain(run, cfg, resume=resume is not None)
    finish_process(0)
