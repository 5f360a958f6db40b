"""What every command shares: config loading with overrides, --dry-run, logging, core pinning."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Callable, NoReturn, Optional

import typer

from tiller.config import Config, ConfigError, dump_config, load_config

ConfigOption = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config file.")]
Overrides = Annotated[Optional[list[str]], typer.Argument(help="Dotted overrides, e.g. learner.lr=1e-6")]
DryRun = Annotated[bool, typer.Option(
    "--dry-run", help="Check what the command checks before it starts, print the resolved config and exit.")]
LearnerAddress = Annotated[
    Optional[str], typer.Option("--learner", help="Learner address, e.g. tcp://10.0.0.5:5555 (default: learner.address).")
]


STANDALONE = False  # True when this process was started as `tiller ...` (tiller.cli.main), not invoked in-process


def finish_process(code: int = 0) -> NoReturn:
    """End a process whose work is all written (files closed, W&B finished). Python's own teardown of a
    learner (torch, DeepSpeed, module clean-up) took 1.3 s after its last line, the end of every run,
    so a process started as `tiller` flushes its output and leaves at once; invoked in-process (tests,
    CliRunner) it exits as usual."""
    if not STANDALONE:
        raise typer.Exit(code)
    if "wandb" in sys.modules:  # its service process stops with its own teardown, not with ours
        sys.modules["wandb"].teardown()
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def resolve(config: Path | None, overrides: list[str] | None, dry_run: bool,
            check: Callable[[Config], None] | None = None, labels: dict[str, str] | None = None,
            hub: bool = True) -> Config:
    """Load the config or exit with its error; with --dry-run run `check` (what the command checks
    before it starts anything), print the config and exit. `labels`: names for overrides a command
    made from its own options (config.load_config). `hub`: fetch the models and datasets named by
    Hugging Face hub id now (tiller/hub.py; --dry-run too, since its checks read them), so the config
    returned, printed or handed to `tiller run`'s children names local folders only."""
    from tiller.hub import resolve_hub_ids

    try:
        cfg = load_config(config, overrides or [], labels)
        if hub:
            cfg = resolve_hub_ids(cfg)
    except ConfigError as exc:
        typer.echo(f"config error: {exc}", err=True)
        raise typer.Exit(2) from None
    if dry_run:
        if check is not None:
            run_or_explain(check, cfg)
        typer.echo(dump_config(cfg), nl=False)
        raise typer.Exit(0)
    return cfg


# Exit codes a worker ends with when starting it again cannot help: `tiller run` ends the run with its message
# instead of restarting it (a config error, weights that do not fit its engine's model).
EXIT_CONFIG = 2
EXIT_DOES_NOT_FIT = 3
DETERMINISTIC_EXITS = (EXIT_CONFIG, EXIT_DOES_NOT_FIT)


def run_or_explain(fn, *args, **kwargs):
    """Run a part; a bad config, data file or key becomes one clear line and exit code 2."""
    from tiller.protocol.security import SecurityError

    from tiller.training.errors import NonFiniteTraining

    try:
        return fn(*args, **kwargs)
    except (ConfigError, SecurityError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_CONFIG) from None
    except NonFiniteTraining as exc:  # the run failed, not its inputs
        typer.echo(f"training stopped: {exc}", err=True)
        raise typer.Exit(1) from None


def prepare_and_run(run, check: Callable[[Config], None], cfg: Config):
    """A model-reading command's body: build the tiny model where the config asks for one, check what its
    --dry-run checks (now that the model is there), then run."""
    from tiller.models import prepare_model

    prepare_model(cfg)
    check(cfg)
    return run(cfg)


def setup_process(role: str) -> list[int] | None:
    """Logging, plus the pinning `tiller run` planned (TILLER_CORES): OS affinity and torch threads. A
    learner lent the actors' cores (TILLER_LENT_CORES) may run on them too; its threads start at its own."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {role} %(levelname)s %(name)s: %(message)s")
    from tiller.placement import CORES_ENV, lent_cores

    cores_text = os.environ.get(CORES_ENV)
    if not cores_text:
        return None
    cores = [int(c) for c in cores_text.split(",")]
    os.sched_setaffinity(0, set(cores) | set(lent_cores()))
    import torch

    torch.set_num_threads(len(cores))
    return cores
