"""The actors' cores, lent to the learner while no actor is generating.

On a CPU machine `tiller run` pins every busy process to cores of its own: shared cores cost 7x
(platform notes). But when training is the bottleneck the actors wait for credit most of the time
(measured: one actor idle 64% of a compute-bound run) while the learner trains on its one core. Under
`run.lend_actor_cores` the learner's process may run on the actors' cores too (OS affinity: its own and
theirs) and this class sets its torch threads before every forward pass of a step: its own cores'
count while any actor holds a lease it is still generating for, its own plus the actors' when none
does. A forward that starts just before an actor gets a lease contends for at most that one pass.
The learner still trains at its own width when nothing is lent, so it never waits for the actors.

    lender = CoreLender(own=1, lendable=1, generating=lambda: server.public["queues"]["generating"])
    lender.adjust()                   # before each forward (PolicyTrainer calls it)
    lender.step_metrics()             # {"learner/threads": mean threads over the step's passes, ...}
"""

from __future__ import annotations

import time
from typing import Callable


class CoreLender:
    def __init__(self, own: int, lendable: int, generating: Callable[[], int],
                 set_threads: Callable[[int], None] | None = None):
        if set_threads is None:
            import torch

            set_threads = torch.set_num_threads
        self.own, self.lendable, self.generating = own, lendable, generating
        self._set_threads = set_threads
        self.threads = own
        self._since = time.monotonic()
        self._thread_seconds = 0.0  # threads x seconds since the last step_metrics
        self._seconds = 0.0
        self.switches = 0

    def adjust(self) -> int:
        """Set the threads for the pass about to run; returns them."""
        wanted = self.own + (self.lendable if self.generating() == 0 else 0)
        self._account()
        if wanted != self.threads:
            self._set_threads(wanted)
            self.threads = wanted
            self.switches += 1
        return wanted

    def _account(self) -> None:
        now = time.monotonic()
        self._thread_seconds += self.threads * (now - self._since)
        self._seconds += now - self._since
        self._since = now

    def step_metrics(self) -> dict[str, float]:
        """The time-weighted mean of the learner's threads since the last call, and the switches so far."""
        self._account()
        mean = self._thread_seconds / self._seconds if self._seconds > 0 else float(self.threads)
        self._thread_seconds = self._seconds = 0.0
        return {"learner/threads": mean, "learner/thread_switches": float(self.switches)}
