"""`tiller learner`: start the learner (coordinator, weight server, DeepSpeed training loop)."""

from __future__ import annotations

import typer

from tiller.cli.common import ConfigOption, DryRun, Overrides, resolve, setup_process


def learner(config: ConfigOption = None, overrides: Overrides = None, dry_run: DryRun = False) -> None:
    """Train: lease prompts to actors, route rollouts to judges, publish new weights."""
    cfg = resolve(config, overrides, dry_run)
    setup_process("learner")
    from tiller.learner.main import run

    run(cfg)
    raise typer.Exit(0)
