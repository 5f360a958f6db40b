"""Non-finite numbers never train: every optimizer step of every stage goes through `FiniteGuard`.

    guard = FiniteGuard(max_in_a_row=5, name="policy", setting="learner.max_nonfinite_steps")
    metrics = guard.step(engine, [lambda: loss_of(chunk) for chunk in chunks])  # backward + step, or a skip

One guard per engine (the policy's, the critic's): its counters are that engine's alone, so one
engine's good steps never hide another's run of skips.

Each callable computes one micro-batch's loss (weighted so that the chunks' losses
sum to the batch loss); its backward runs before the next chunk's forward, so only one chunk's
activations are alive at a time, and the optimizer steps once, at the last chunk (DeepSpeed's
accumulation boundary is set by hand, because the number of chunks varies from step to step).

A non-finite loss poisons the step: earlier chunks' gradients are already summed in when a later
chunk's loss turns out non-finite, so the remaining chunks are skipped; without ZeRO the guard
drops the plain `.grad` tensors itself (a NaN first loss is never backpropagated at all), and under
ZeRO the last chunk's backward is multiplied by NaN, so that ZeRO's own check drops the sum.

A finite loss can still give a non-finite gradient: without ZeRO (stage 0) DeepSpeed would apply
it, so the guard takes the pre-clip gradient norm itself and skips the step; ZeRO stages 1-3 detect it in their own
step (they report an infinite norm and leave the weights alone), which the guard reads back.
Each skip is counted and warned about; `max_in_a_row` skips in a row raise `NonFiniteTraining`,
because a run that only skips is not training. `assert_finite` is the last line of defence:
weights are checked before they are published to actors or saved.
"""

from __future__ import annotations

import logging
import math
from typing import Callable, Iterable, Sequence

import torch

from tiller.training.errors import NonFiniteTraining

__all__ = ["FiniteGuard", "NonFiniteTraining", "assert_finite", "grad_norm"]

log = logging.getLogger(__name__)


def grad_norm(parameters: Iterable[torch.nn.Parameter]) -> float | None:
    """The L2 norm of all gradients (inf or NaN if any entry is), or None when no parameter holds one
    (ZeRO keeps gradients in its own partitions)."""
    grads = [p.grad.detach() for p in parameters if p.grad is not None]
    if not grads:
        return None
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])))


def assert_finite(named: Iterable[tuple[str, torch.Tensor]], what: str) -> None:
    """Raise `NonFiniteTraining` naming the first tensor with a NaN or infinity."""
    for name, tensor in named:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise NonFiniteTraining(f"refusing to {what}: weight {name} holds NaN or infinity")


class FiniteGuard:
    def __init__(self, max_in_a_row: int = 5, name: str = "policy", setting: str = "max_nonfinite_steps"):
        self.max_in_a_row = max_in_a_row
        self.name = name  # which engine's steps these are, in warnings and the error
        self.setting = setting  # the config key that sets max_in_a_row, named in the error (stages differ)
        self.skipped = 0  # over the whole run
        self.in_a_row = 0

    def step(self, engine, chunks: Sequence[Callable[[], torch.Tensor]]) -> dict[str, float]:
        """Backward and optimizer step of a DeepSpeed `engine` on the sum of the micro-batch losses `chunks`
        compute, unless something is not finite. Returns {"grad_norm": pre-clip norm (NaN when unknown),
        "skipped": 0 or 1}."""
        poisoned = self._accumulate(engine, chunks)
        if poisoned and engine.zero_optimization_stage() == 0:
            engine.zero_grad()
            return self._skip(poisoned)
        norm = grad_norm(engine.module.parameters())
        if norm is not None and not math.isfinite(norm):
            engine.zero_grad()  # drop the poisoned gradient; the weights stay as they were
            return self._skip(f"gradient norm is {norm}")
        engine.step()
        if norm is None:  # ZeRO computed it (and skipped the update itself if it was not finite)
            reported = engine.get_global_grad_norm()
            norm = float(reported) if reported is not None else math.nan
            if poisoned or math.isinf(norm):  # poisoned: ZeRO saw the NaN the boundary's backward carried
                return self._skip(poisoned or "ZeRO found a non-finite gradient and skipped the update")
        self.in_a_row = 0
        return {"grad_norm": norm, "skipped": 0.0}

    @staticmethod
    def _accumulate(engine, chunks: Sequence[Callable[[], torch.Tensor]]) -> str | None:
        """Backward of every chunk's loss; returns why the summed gradient is poisoned, or None."""
        poisoned = None
        last = len(chunks) - 1
        zero = engine.zero_optimization_stage() > 0
        for index, compute in enumerate(chunks):
            if poisoned and (index < last or not zero):
                continue  # the step is lost; ZeRO still needs the boundary's backward, stage 0 drops .grad itself
            engine.set_gradient_accumulation_boundary(index == last)
            loss = compute()
            if poisoned is None and not bool(torch.isfinite(loss.detach()).all()):
                poisoned = f"loss of micro-batch {index + 1}/{len(chunks)} is {loss.item()}"
                if not zero:
                    continue
            engine.backward(loss * float("nan") if poisoned else loss, scale_wrt_gas=False)
        return poisoned

    def _skip(self, why: str) -> dict[str, float]:
        self.skipped += 1
        self.in_a_row += 1
        log.warning("skipped a %s optimizer step: %s (%d skipped in a row, %d in all)", self.name, why,
                    self.in_a_row, self.skipped)
        if self.in_a_row >= self.max_in_a_row:
            raise NonFiniteTraining(f"{self.in_a_row} optimizer steps in a row of the {self.name} had non-finite "
                                    f"numbers ({why}); stopping rather than training on them "
                                    f"({self.setting})")
        return {"grad_norm": math.nan, "skipped": 1.0}
