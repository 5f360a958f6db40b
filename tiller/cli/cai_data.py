"""`tiller cai-data`: Constitutional-AI data, the policy's answers critiqued and revised by a judge model."""

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


def cai_data(
    config: Annotated[Path, typer.Argument(help="YAML config, e.g. configs/datagen/cai.yaml")],
    overrides: Overrides = None,
    dry_run: DryRun = False,
) -> None:
    """One answer per prompt of datagen.prompts from the policy (model.path; greedy at datagen.temperature 0),
    critiqued and revised under the constitution (judge.constitution_path, default the shipped four) by the
    cai judge. Each changed, finished revision becomes a row that is SFT data (prompt, completion) and a
    preference (chosen: revision, rejected: answer) at once. Writes datagen.output (default
    runs/<name>/cai-data.jsonl) and runs/<name>/cai-data.summary.json."""
    from tiller.eval.datagen import check

    cfg = resolve(config, overrides, dry_run, check=lambda c: check(c, "cai-data"))
    setup_process("cai-data")
    from tiller.eval.datagen import cai_data as run

    summary = run_or_explain(run, cfg)
    typer.echo(json.dumps(summary, indent=2))
    finish_process(0)
