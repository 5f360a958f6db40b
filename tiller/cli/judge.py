"""`tiller judge`: start one judge actor that joins a running learner."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from tiller.cli.common import (
    ConfigOption, DryRun, LearnerAddress, Overrides, finish_process, resolve, run_or_explain, setup_process,
)


def judge(
    config: ConfigOption = None,
    overrides: Overrides = None,
    learner: LearnerAddress = None,
    judge_id: Annotated[Optional[str], typer.Option("--id", help="Judge name (default: judge-HOST-PID).")] = None,
    dry_run: DryRun = False,
) -> None:
    """Score rollouts for the learner at --learner, as judge.kind says: rule (a Python function of prompt
    and response), reward_model (a sequence classifier), llm_pairwise (an LLM served by vLLM compares
    two responses: RLAIF), cai (Constitutional AI: critique and revise against a constitution, prefer
    the revision), composed (a weighted sum of scorers, optionally gated by a rule) or safety (the safety
    section's scorer: 1 for a safe answer, 0 for an unsafe one or an over-refusal)."""
    from tiller.cli.preflight import check_judge

    cfg = resolve(config, overrides, dry_run, check=lambda c: check_judge(c.judge))
    run_or_explain(check_judge, cfg.judge)  # a rule that does not import: one line now, not five failed tasks
    setup_process(judge_id or "judge")
    from tiller.actors.judge import JudgeActor
    from tiller.actors.worker import LearnerGone
    from tiller.models import prepare_model

    run_or_explain(prepare_model, cfg)  # the judge decodes with the policy's tokenizer
    judge_actor = run_or_explain(lambda: JudgeActor(cfg, learner or cfg.learner.address, judge_id))
    try:
        judged = run_or_explain(judge_actor.run)
    except LearnerGone as exc:
        typer.echo(f"judge stopped: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"judge done: {judged} tasks judged")
    judge_actor.close()
    finish_process(0)
