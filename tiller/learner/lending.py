"""What the learner does with the actors' cores `tiller run` lent it (`run.lend_actor_cores`).

On a CPU machine the learner and each actor have cores of their own. When training is the
bottleneck the actors wait for credit and their cores idle; two ways to use them:

    reference  a thread pinned to the actors' cores computes the frozen reference's log-probs of each
               judged prompt before the learner takes it (tiller/learner/reference_ahead.py): the step
               loses its reference pass, a quarter to a third of its compute
    threads    torch's threads widen onto the actors' cores for each forward pass that starts while no
               actor generates (tiller/learner/core_lending.py; measured not to pay on the toy)
    auto       probe: the 2nd to 4th steps of this start (of a resumed run too) run as they would without lending; if the actors idled at least
               `AUTO_ACTOR_IDLE` of that time while the learner hardly waited (training is the
               bottleneck), `reference` from then on, else nothing. The decision and its reason go to the
               console and to `perf/reference_ahead` (1 while on).

    lending = Lending(cfg, trainer, server, algorithm.needs)
    item = lending.scored.get(timeout=1.0)   # the queue the training loop reads
    metrics.update(lending.after_step(step, phases))
"""

from __future__ import annotations

import os
import queue
import statistics
from functools import partial

import torch

from tiller.config import Config
from tiller.learner.core_lending import CoreLender
from tiller.learner.reference_ahead import ReferenceAhead
from tiller.placement import lent_cores, own_cores

PROBE_STEPS = range(2, 5)  # steps of this start the auto probe watches (its first carries the start-up)
AUTO_ACTOR_IDLE = 0.3  # actors' idle share above which their cores are worth lending
AUTO_LEARNER_IDLE = 0.2  # the learner's waiting share below which training is the bottleneck


class Lending:
    def __init__(self, cfg: Config, trainer, server, needs: str):
        self.trainer, self.server, self.needs = trainer, server, needs
        self.lent = lent_cores()
        self.own = own_cores()
        self.mode = cfg.run.lend_actor_cores if self.lent else "off"
        if cfg.learner.torch_threads and self.mode == "threads":  # threads asked for by hand stay as asked
            self.mode = "off"
        # PPO, GRPO and RLOO take the reference at the sampling temperature, DPO at 1 (their steps' own)
        self.temperature = 1.0 if needs == "pairs" else cfg.rollout.temperature
        self.max_rows = cfg.learner.micro_batch_size or 16
        self.ahead: ReferenceAhead | None = None
        self._probe: list[tuple[float, float]] = []  # (actors' idle share, learner's idle share) per step
        self._probed: list[int] = []  # the run's step numbers the probe watched
        self._started = 0  # steps this start has finished: a resumed run probes its own first steps
        if self.mode in ("reference", "auto") and self.own:
            os.sched_setaffinity(0, self.own)  # this thread trains on its own cores; the lent ones are the thread's
        if self.mode == "threads":
            self._lend_threads()
        elif self.mode == "reference":
            self._start_reference("run.lend_actor_cores: reference")

    @property
    def scored(self) -> queue.Queue:
        """The judged prompts, in arrival order: through the reference thread once it runs."""
        return self.ahead.scored if self.ahead is not None else self.server.scored

    def _lend_threads(self) -> None:
        own = torch.get_num_threads()
        lender = CoreLender(own, len(self.lent), lambda: self.server.public.get("queues", {}).get("generating", 1))
        self.trainer.before_forward, self.trainer.thread_metrics = lender.adjust, lender.step_metrics
        print(f"learner: {own} thread(s) on its own cores, {own + len(self.lent)} while no actor is generating "
              f"(cores {','.join(map(str, self.lent))}: run.lend_actor_cores: threads)", flush=True)

    def _start_reference(self, why: str) -> None:
        logprobs = partial(self.trainer.reference_pass, temperature=self.temperature)
        self.ahead = ReferenceAhead(logprobs, self.server.scored, self.lent, self.needs, max_rows=self.max_rows)
        self.ahead.start()
        print(f"learner: the reference's log-probs computed ahead of each batch on core(s) "
              f"{','.join(map(str, self.lent))} ({why})", flush=True)

    def after_step(self, step: int, phases: dict[str, float]) -> dict[str, float]:
        """This step's lending metrics; in auto mode, watches the probe steps and decides after the last."""
        self._started += 1
        if self.mode == "auto" and self.ahead is None and self._started in PROBE_STEPS:
            self._probe.append((phases["actors/idle_frac"], phases["learner/idle_frac"]))
            self._probed.append(step)
            if self._started == PROBE_STEPS[-1]:
                self._decide()
        metrics: dict[str, float] = {}
        if self.mode in ("reference", "auto"):
            metrics["reference_ahead/on"] = float(self.ahead is not None)
        if self.ahead is not None:
            metrics.update(self.ahead.step_metrics())
        return metrics

    def _decide(self) -> None:
        actors = statistics.fmean(a for a, _ in self._probe)
        learner = statistics.fmean(w for _, w in self._probe)
        seen = (f"over steps {self._probed[0]}-{self._probed[-1]} the actors idled {actors:.0%} of their time and the "
                f"learner waited {learner:.0%} of its own")
        if actors >= AUTO_ACTOR_IDLE and learner <= AUTO_LEARNER_IDLE:
            self._start_reference(f"run.lend_actor_cores: auto; {seen}: training is the bottleneck")
        else:
            print(f"learner: the reference stays on its own cores (run.lend_actor_cores: auto; {seen}; lending "
                  f"pays when the actors idle {AUTO_ACTOR_IDLE:.0%} or more while the learner waits "
                  f"{AUTO_LEARNER_IDLE:.0%} or less)", flush=True)

    def close(self) -> None:
        if self.ahead is not None:
            self.ahead.stop()
