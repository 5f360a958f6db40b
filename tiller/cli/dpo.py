"""`tiller dpo`: offline DPO on `dpo.data` preference pairs, with the online learner's loss."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tiller.cli.common import DryRun, Overrides, finish_process, resolve, run_or_explain, setup_process


def dpo(
    config: Annotated[Path, typer.Argument(help="YAML config, e.g. configs/offline/dpo.yaml")],
    overrides: Overrides = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue runs/<name> from its latest checkpoint.")] = False,
    dry_run: DryRun = False,
) -> None:
    """Offline DPO on dpo.data {prompt, chosen, rejected} rows, with the online learner's loss
    variants (dpo.loss); writes runs/<name>/final/."""
    from tiller.offline.data import check_sources

    cfg = resolve(config, overrides, dry_run, check=lambda c: check_sources(c.dpo.data, "dpo"))
    setup_process("dpo")
    from tiller.offline.dpo import run

    run_or_explain(run, cfg, resume=resume)
    finish_process(0)
