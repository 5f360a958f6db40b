"""`tiller redteam`: adversarial requests per harm category; failure rates and the failures as training data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tiller.cli.common import (
    DryRun, Overrides, finish_process, prepare_and_run, resolve, run_or_explain, setup_process,
)


def check(cfg) -> None:
    from tiller.eval.redteam import seed_prompts
    from tiller.models import check_model_dir

    check_model_dir(cfg.model.path, "model.path", "model.build_tiny", cfg.model.build_tiny)
    if cfg.redteam.attacker_path:
        check_model_dir(cfg.redteam.attacker_path, "redteam.attacker_path")
    seed_prompts(cfg)


def redteam(
    config: Annotated[Path, typer.Argument(help="YAML config, e.g. configs/eval/redteam.yaml")],
    overrides: Overrides = None,
    dry_run: DryRun = False,
) -> None:
    """Adversarial prompts per harm category (shipped, and optionally an attacker model's), answered by
    model.path and scored by the safety scorer; writes runs/<name>/redteam.md and failures*.jsonl that
    the next tiller sft / dpo / run reads."""
    cfg = resolve(config, overrides, dry_run, check=check)
    setup_process("redteam")
    from tiller.eval.redteam import markdown, run

    report = run_or_explain(prepare_and_run, run, check, cfg)
    typer.echo(markdown(report))
    typer.echo(f"report: {cfg.run_dir / 'redteam.md'}; failures as data: {cfg.run_dir}/failures*.jsonl")
    finish_process(0)
