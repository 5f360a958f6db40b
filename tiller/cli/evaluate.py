"""`tiller eval`: measure a model (and a baseline) on the evaluation sets; report in runs/<name>/."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tiller.cli.common import (
    DryRun, Overrides, finish_process, prepare_and_run, resolve, run_or_explain, setup_process,
)


def check(cfg) -> None:
    """What `tiller eval` reads, checked before any model loads: the models and every set."""
    from tiller.eval.evaluate import load_sets
    from tiller.models import check_model_dir

    check_model_dir(cfg.model.path, "model.path", "model.build_tiny", cfg.model.build_tiny)
    if cfg.eval.baseline_path:
        check_model_dir(cfg.eval.baseline_path, "eval.baseline_path")
    load_sets(cfg)


def evaluate(
    config: Annotated[Path, typer.Argument(help="YAML config, e.g. configs/eval/safety.yaml")],
    overrides: Overrides = None,
    dry_run: DryRun = False,
) -> None:
    """Harmlessness and refusal per harm category, over-refusal of benign look-alikes, helpfulness,
    honesty, reward, win rate and KL against eval.baseline_path; writes runs/<name>/report.md,
    report.json, answers.jsonl and PNGs."""
    cfg = resolve(config, overrides, dry_run, check=check)
    setup_process("eval")
    from tiller.eval.evaluate import run
    from tiller.eval.report import markdown

    report = run_or_explain(prepare_and_run, run, check, cfg)
    typer.echo(markdown(report))
    typer.echo(f"report: {cfg.run_dir / 'report.md'} (and report.json, answers.jsonl, eval-*.png)")
    finish_process(0)
