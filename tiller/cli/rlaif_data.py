"""`tiller rlaif-data`: preference data from an LLM judge's pairwise verdicts on the policy's own answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from tiller.cli.common import (
    DryRun,
    Overrides,
    finish_process,
    resolve,
    run_or_explain,
    setup_process,
)


def rlaif_data(
    config: Annotated[Path, typer.Argument(help="YAML config, e.g. configs/datagen/rlaif.yaml")],
    overrides: Overrides = None,
    dry_run: DryRun = False,
) -> None:
    """datagen.samples_per_prompt answers per prompt of datagen.prompts from the policy (model.path), every
    pair of distinct answers judged by the llm_pairwise judge (both orders with judge.swap_positions);
    each decided pair becomes a {prompt, chosen, rejected} row that tiller dpo and tiller rm read as is.
    Writes datagen.output (default runs/<name>/rlaif-data.jsonl) and runs/<name>/rlaif-data.summary.json."""
    from tiller.eval.datagen import check

    cfg = resolve(config, overrides, dry_run, check=lambda c: check(c, "rlaif-data"))
    setup_process("rlaif-data")
    from tiller.eval.datagen import rlaif_data as run

    summary = run_or_explain(run, cfg)
    typer.echo(json.dumps(summary, indent=2))
    finish_process(0)
