"""`tiller plot`: charts of a run (reward, KL, loss, throughput, staleness, phase times) as PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def plot(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (runs/<name>), holding metrics.jsonl.")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Where to write the PNGs (default: RUN_DIR/plots).")] = None,
) -> None:
    """Draw a run's metrics.jsonl to PNGs: reward, KL, loss, throughput, staleness and phase times."""
    from tiller.plots import plot_run

    try:
        written = plot_run(run_dir, out)
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(f"tiller plot: {exc}", err=True)
        raise typer.Exit(2) from None
    for path in written:
        typer.echo(str(path))
