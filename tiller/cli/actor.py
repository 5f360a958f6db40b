"""`tiller actor`: start one rollout actor (vLLM) that joins a running learner."""

from __future__ import annotations

import signal
from typing import Annotated, Optional

import typer

from tiller.cli.common import (
    EXIT_DOES_NOT_FIT, ConfigOption, DryRun, LearnerAddress, Overrides, finish_process, resolve, run_or_explain,
    setup_process,
)


def actor(
    config: ConfigOption = None,
    overrides: Overrides = None,
    learner: LearnerAddress = None,
    actor_id: Annotated[Optional[str], typer.Option("--id", help="Actor name (default: actor-HOST-PID).")] = None,
    stay: Annotated[bool, typer.Option(
        "--stay", help="When the learner finishes, keep the engine warm and serve the next learner at the same "
                       "address (a later `tiller run ... --actors 0`, or `tiller learner`), until interrupted."
    )] = False,
    dry_run: DryRun = False,
) -> None:
    """Generate rollouts with vLLM for the learner at --learner, until it says stop."""
    cfg = resolve(config, overrides, dry_run)
    setup_process(actor_id or "actor")
    # SIGTERM (`kill`, `tiller run` stopping its workers, a container's stop) ends the actor as Ctrl-C does,
    # engine closed. It is also the one way to stop an actor started in the background by a script: there
    # the shell hands it SIGINT ignored, and Python then never raises KeyboardInterrupt (measured: the
    # test suite run as a background job lost every interrupt sent to a warm actor).
    signal.signal(signal.SIGTERM, _interrupt)
    from tiller.actors.rollout import RolloutActor, WeightsDoNotFit
    from tiller.actors.worker import LearnerGone
    from tiller.models import prepare_model

    run_or_explain(prepare_model, cfg)  # a tiny demo model is built on the spot if it is not there yet
    rollout_actor = run_or_explain(lambda: RolloutActor(cfg, learner or cfg.learner.address, actor_id))
    try:
        sent = run_or_explain(rollout_actor.run, stay)
    except WeightsDoNotFit as exc:  # another model: a restart would fail the same way
        typer.echo(f"actor stopped: {exc}", err=True)
        raise typer.Exit(EXIT_DOES_NOT_FIT) from None
    except LearnerGone as exc:
        typer.echo(f"actor stopped: {exc}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt as exc:  # how a warm (--stay) actor is meant to end
        typer.echo(f"actor stopped: interrupted ({str(exc) or 'SIGINT'})")
        rollout_actor.engine.close()
        finish_process(0)
    typer.echo(f"actor done: {sent} rollouts sent")
    rollout_actor.engine.close()  # 0.2 s; Python's teardown of the engine and torch took 2.6 s more (measured)
    finish_process(0)


def _interrupt(signum: int, _frame) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)
