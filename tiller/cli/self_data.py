"""`tiller self-data`: a model's own answers to prompts as SFT rows, the anchor of a fine-tune."""

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


def self_data(
    config: Annotated[Path, typer.Argument(help="YAML config, e.g. configs/safety/self-data.yaml")],
    overrides: Overrides = None,
    dry_run: DryRun = False,
) -> None:
    """One answer per prompt of datagen.prompts from the model (model.path, at datagen.temperature), each
    one that is not a refusal written as a {prompt, completion} row that tiller sft reads as is (an answer
    cut at the token limit is trimmed to its last whole sentence): training on them keeps a fine-tune where
    the model already answers well. Writes datagen.output (default runs/<name>/self-data.jsonl) and
    runs/<name>/self-data.summary.json."""
    from tiller.eval.datagen import read_prompts

    cfg = resolve(config, overrides, dry_run,
                  check=lambda c: read_prompts(c.datagen.prompts, c.datagen.max_prompts))
    setup_process("self-data")
    from tiller.eval.self_data import self_data as run

    summary = run_or_explain(run, cfg)
    typer.echo(json.dumps(summary, indent=2))
    finish_process(0)
