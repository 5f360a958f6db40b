"""`tiller status`: a running learner's progress, actors, judges and outstanding leases, as a table."""

from __future__ import annotations

from typing import Annotated

import typer

from tiller.cli.common import ConfigOption, LearnerAddress, Overrides, resolve


def format_status(status) -> str:
    """The Status message as the table `tiller status` prints."""
    lines = [f"learner: policy version {status.policy_version}, step {status.step}/{status.steps}, "
             f"{status.samples_per_s:.1f} samples/s, mean reward {status.reward_mean:.3f}",
             f"prompts in flight {status.inflight_prompts}, rollouts awaiting a judge {status.awaiting_judges}", ""]
    width = max([len(a) for a in status.actors + status.judges] + [6])
    lines.append(f"{'actor':<{width}}  {'version':>7}  {'leases':>6}  {'rollouts':>8}")
    for name, version, leases, rollouts in zip(status.actors, status.actor_versions, status.actor_leases,
                                               status.actor_rollouts):
        lines.append(f"{name:<{width}}  {version:>7}  {leases:>6}  {rollouts:>8}")
    lines += ["", f"{'judge':<{width}}  {'tasks':>7}"]
    lines += [f"{name:<{width}}  {tasks:>7}" for name, tasks in zip(status.judges, status.judge_tasks)]
    interesting = {k: v for k, v in status.counters.items() if v}
    if interesting:
        lines += ["", "counters: " + ", ".join(f"{k} {v:g}" for k, v in sorted(interesting.items()))]
    return "\n".join(lines)


def status(
    config: ConfigOption = None,
    overrides: Overrides = None,
    learner: LearnerAddress = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for the learner's answer.")] = 5.0,
) -> None:
    """Ask a running learner how it is doing: version, step, throughput, each actor's and judge's work."""
    cfg = resolve(config, overrides, False)  # the address and, under CURVE, the keys to connect with
    from tiller.protocol.messages import Status, StatusRequest
    from tiller.protocol.transport import LearnerClient

    address = learner or cfg.learner.address
    client = LearnerClient(address, security=cfg.security)
    try:
        reply = client.request(StatusRequest("tiller-status"), timeout)
    finally:
        client.close()
    if not isinstance(reply, Status):
        typer.echo(f"no answer from a learner at {address} within {timeout:g} s", err=True)
        raise typer.Exit(1)
    typer.echo(format_status(reply))
