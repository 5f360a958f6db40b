"""`tiller sft`: supervised fine-tuning on the response tokens of `sft.data`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tiller.cli.common import DryRun, Overrides, finish_process, resolve, run_or_explain, setup_process


def sft(
    config: Annotated[Path, typer.Argument(help="YAML config, e.g. configs/offline/sft.yaml")],
    overrides: Overrides = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue runs/<name> from its latest checkpoint.")] = False,
    dry_run: DryRun = False,
) -> None:
    """Supervised fine-tuning on the response tokens of sft.data (prompt/completion, messages or
    instruction rows), refusal data mixed in by weight; writes runs/<name>/final/."""
    from tiller.offline.data import check_sources

    cfg = resolve(config, overrides, dry_run, check=lambda c: check_sources(c.sft.data, "sft"))
    setup_process("sft")
    from tiller.offline.sft import run

    run_or_explain(run, cfg, resume=resume)
    finish_process(0)
