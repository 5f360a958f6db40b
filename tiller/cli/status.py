"""`tiller status`: a running learner's progress, actors, judges and outstanding leases, as a table."""

from __future__ import annotations

from typing import Annotated

import typer

from tiller.cli.common import ConfigOption, LearnerAddress, Overrides, resolve


def printable(text: str) -> str:
    """`text` without control and other non-printable characters. Workers name themselves and the names
    reach this table over the wire: an escape sequence (ESC [ 2 J clears the screen), a newline or a
    right-to-left override in one must not redraw or forge the operator's terminal output."""
    return "".join(c for c in str(text) if c.isprintable())


def format_status(status) -> str:
    """The Status message as the table `tiller status` prints."""
    actors, judges = [printable(a) for a in status.actors], [printable(j) for j in status.judges]
    lines = [f"learner: policy version {status.policy_version}, step {status.step}/{status.steps}, "
             f"{status.samples_per_s:.1f} samples/s, mean reward {status.reward_mean:.3f}",
             f"prompts in flight {status.inflight_prompts}, rollouts awaiting a judge {status.awaiting_judges}", ""]
    width = max([len(a) for a in actors + judges] + [6])
    lines.append(f"{'actor':<{width}}  {'version':>7}  {'leases':>6}  {'rollouts':>8}")
    for name, version, leases, rollouts in zip(actors, status.actor_versions, status.actor_leases,
                                               status.actor_rollouts):
        lines.append(f"{name:<{width}}  {version:>7}  {leases:>6}  {rollouts:>8}")
    lines += ["", f"{'judge':<{width}}  {'tasks':>7}"]
    lines += [f"{name:<{width}}  {tasks:>7}" for name, tasks in zip(judges, status.judge_tasks)]
    interesting = {printable(k): v for k, v in status.counters.items() if v}
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
    cfg = resolve(config, overrides, False, hub=False)  # the address and, under CURVE, the keys to connect with
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
