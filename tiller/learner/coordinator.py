"""The coordinator: prompt leases, routing to judges, staleness and exactly-once bookkeeping.

Pure state, no sockets and no threads: the learner's socket thread calls it with decoded
messages and sends whatever it returns, which keeps every rule here testable by hand.

A lease moves  issued -> generated (rollout in, queued for a judge) -> judging -> done.
Expired leases give their prompts back to the front of the queue; a rollout or score for a
lease that is no longer live is a late duplicate and is dropped (and counted).

Live evaluation's leases (`evals`, eval_book.py) go first when a round waits for answers, share the
lease ids, the judges' line and the refusal counters, and nothing else: no credit, no prompt ids of the
stream, no place in `state_dict`; their judged answers come out of `on_scores` as `EvalAnswers`.
"""

from __future__ import annotations

import json

import dataclasses
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from tiller.config import LearnerConfig, RolloutConfig
from tiller.learner.eval_book import DUPLICATE, EvalAnswers, EvalBook, Refusal
from tiller.learner.prompts import PromptStream
from tiller.learner.validation import rollout_problem, scores_problem, valid_pairs
from tiller.protocol.messages import (
    JudgeFailed, Lease, LeaseRequest, Rollout, Scores, ScoreTask, Shutdown, Wait, unflatten,
)


PAIRS_ONLY_JUDGES = frozenset({"cai"})


@dataclass(frozen=True)
class ScoredPrompt:
    """One judged prompt, ready for the learner's buffer.

    Candidates are numbered as in the `Scores` message: 0..k-1 the samples, k+j the judge's
    revision of sample j (Constitutional AI), which has no behaviour logprobs and no score.
    """

    prompt_id: int
    lease_id: int
    policy_version: int
    prompt: np.ndarray  # int32 [P]
    responses: list[np.ndarray]  # k int32 arrays
    logprobs: list[np.ndarray]  # k float32 arrays, behaviour policy
    scores: np.ndarray  # float32 [k]
    truncated: np.ndarray  # bool [k]: cut at max_new_tokens
    pairs: tuple[tuple[int, int], ...] = ()  # (chosen, rejected) candidates; empty: the judge saw no preference
    revisions: tuple[np.ndarray | None, ...] = ()  # k entries when the judge revised, else empty
    # candidate -> the frozen reference's log-probs of its response tokens, when computed ahead of the
    # batch on lent cores (tiller/learner/reference_ahead.py); empty: the step computes them
    reference: dict[int, np.ndarray] = field(default_factory=dict, compare=False)

    def candidate(self, index: int) -> np.ndarray:
        k = len(self.responses)
        return self.responses[index] if index < k else self.revisions[index - k]


@dataclass
class _LeaseState:
    actor: str  # "actor_id#incarnation" the lease was issued to; only its rollout is accepted
    prompt_ids: list[int]
    deadline: float
    version: int  # the learner's version when issued: the actor generates with this one or a newer one
    rollout: Rollout | None = None
    judge: str | None = None  # "judge_id#incarnation" the score task went to


@dataclass
class Counters:
    leases_issued: int = 0
    leases_expired: int = 0
    leases_completed: int = 0
    prompts_released: int = 0  # prompts given back for re-leasing (expiry or staleness)
    duplicates_dropped: int = 0  # results for a lease that is no longer live, or already answered
    wrong_sender: int = 0  # results for a live lease from a worker it was not given to
    rollouts_invalid: int = 0  # rollouts refused by validation.py: their prompts are leased again at once
    scores_invalid: int = 0  # judge answers refused by validation.py: the task goes to the next judge
    waits_credit: int = 0
    waits_peer_credit: int = 0  # an actor (or all unproven actors together) already holds its share
    judge_failures: int = 0  # tasks a judge gave up on: their prompts are generated again
    pairs_invalid: int = 0  # pairs a judge named that do not exist: dropped, the rest of its answer kept


@dataclass
class Phases:
    """Where the actors' time went, summed over accepted rollouts (each reports since its previous one).
    The training loop reads differences between steps (main.py: phase metrics)."""

    generate_s: float = 0.0
    load_s: float = 0.0
    idle_s: float = 0.0
    tokens_generated: int = 0

    def add(self, rollout: Rollout) -> None:
        # timing fields are the actor's own report: clamp, never trust them into the metrics unbounded
        clamp = lambda x: min(max(float(x), 0.0), 3600.0)  # noqa: E731
        self.generate_s += clamp(rollout.generate_seconds)
        self.load_s += clamp(rollout.load_seconds)
        self.idle_s += clamp(rollout.idle_seconds)
        self.tokens_generated += len(rollout.response_tokens)


@dataclass
class Coordinator:
    prompts: PromptStream
    learner: LearnerConfig
    rollout: RolloutConfig
    seed: int = 0
    clock: Callable[[], float] = time.monotonic
    vocab_size: int | None = None  # token ids from workers must be below it
    needs: str = "pairs"  # what the algorithm trains on: "pairs" or "scores" (algorithms.py)
    evals: EvalBook | None = None  # live evaluation's rounds; None: off
    version: int = 0
    done: bool = False
    counters: Counters = field(default_factory=Counters)
    phases: Phases = field(default_factory=Phases)

    def __post_init__(self) -> None:
        # A new number for every learner start; lease ids start from it too, so a rollout for a
        # lease of a previous start can never match a lease of this one.
        self.incarnation = time.time_ns() // 1000
        self._next_fresh = 0
        self._released: deque[int] = deque()  # prompts to lease again, before fresh ones
        self._leases: dict[int, _LeaseState] = {}
        self._next_lease_id = self.incarnation
        self._score_queue: deque[int] = deque()
        self._buffered: set[int] = set()  # prompts handed to the learner and not yet consumed
        self.actor_versions: dict[str, int] = {}  # live actors that hold or held a lease -> engine version
        self._proven: set[str] = set()  # actors that returned a valid rollout (bounded: dead ones are forgotten)
        self.problems: dict[str, int] = {}  # refusal reason -> count (validation.py's words)
        self.last_problem: str | None = None  # the latest refusal in full, for the server's log
        self.refused = 0  # every refusal counted in `problems`, in total

    # --------------------------------------------------------------- actors

    def leases_by_actor(self) -> dict[str, int]:
        """Leases being generated now (no rollout back yet), by actor name."""
        held: dict[str, int] = {}
        for state in self._leases.values():
            if state.rollout is not None:
                continue
            name = state.actor.rsplit("#", 1)[0]
            held[name] = held.get(name, 0) + 1
        return held

    @property
    def awaiting_judges(self) -> int:
        """Rollouts generated and not yet handed to a judge."""
        return len(self._score_queue)

    @property
    def generating(self) -> int:
        """Leases (training and eval) whose actor has not sent its rollout back: actors at work."""
        return sum(s.rollout is None for s in self._leases.values()) + (self.evals.generating if self.evals else 0)

    @property
    def inflight_prompts(self) -> int:
        return len(self._buffered) + sum(len(s.prompt_ids) for s in self._leases.values())

    def on_lease_request(self, request: LeaseRequest) -> Lease | Wait | Shutdown:
        actor = f"{request.actor_id}#{request.incarnation}"
        if self.done:
            return Shutdown("training finished")
        if self.evals is not None and self.evals.wants(actor):  # an eval round goes first: it is small
            self.actor_versions[actor] = min(max(request.policy_version, -1), self.version)
            lease_id = self._next_lease_id
            self._next_lease_id += 1
            return self.evals.lease(lease_id, actor, self.version, self.clock(), self.incarnation)
        # The actor syncs to `version` before generating, so this bounds the lag at lease time.
        size = self._lease_size()
        if size == 0:
            self.counters.waits_credit += 1
            return Wait("no credits: the learner has enough work in flight", 0.05, self.version, self.incarnation)
        if not self._peer_may_lease(actor):
            self.counters.waits_peer_credit += 1
            return Wait("this actor's share of credits is in use", 0.2, self.version, self.incarnation)
        # Only actors given work are reported, and only with a version that can exist: a stranger's
        # made-up number (or name) never reaches the metrics.
        self.actor_versions[actor] = min(max(request.policy_version, -1), self.version)
        prompt_ids = [self._take_prompt() for _ in range(size)]
        lease_id = self._next_lease_id
        self._next_lease_id += 1
        self._leases[lease_id] = _LeaseState(actor, prompt_ids, self.clock() + self.learner.lease_timeout_s,
                                             self.version)
        self.counters.leases_issued += 1
        tokens, lengths = self.prompts.pack(prompt_ids)
        return Lease(
            lease_id=lease_id,
            latest_version=self.version,
            prompt_ids=np.asarray(prompt_ids, dtype=np.int64),
            prompt_tokens=tokens,
            prompt_lengths=lengths,
            samples_per_prompt=self.rollout.samples_per_prompt,
            max_new_tokens=self.rollout.max_new_tokens,
            temperature=self.rollout.temperature,
            top_p=self.rollout.top_p,
            seed=self.sampling_seed(self.counters.leases_issued - 1),
            deadline_s=self.learner.lease_timeout_s,
            learner_incarnation=self.incarnation,
        )

    def _lease_size(self) -> int:
        """Prompts the next lease may carry (0: wait).

        Asynchronous: full leases while `max_inflight_prompts` and the lag bound allow. Synchronous
        (`learner.mode: sync`): the prompts out (leased, judged, or in the learner's batch) never exceed one step's
        `batch_size`; the learner keeps its batch counted until the step is trained and published,
        so nothing is leased while it trains and every sample is generated by the current policy.
        """
        lc = self.learner
        if lc.mode == "sync":
            free = min(lc.max_inflight_prompts, lc.batch_size) - self.inflight_prompts
            return max(0, min(lc.lease_prompts, free))
        # Staleness-aware admission (after AReaL's rule): prompts are trained in about the order they
        # come back, `batch_size` per step and a new version every `sync_every` steps, so a prompt
        # leased behind more than (max_policy_lag + 1) versions' worth of work would be too stale to
        # train when its turn came. Never lease it: generating it would be wasted work.
        trainable_in_time = (lc.max_policy_lag + 1) * lc.sync_every * lc.batch_size
        free = min(lc.max_inflight_prompts, trainable_in_time) - self.inflight_prompts
        return lc.lease_prompts if free >= lc.lease_prompts else 0

    def sampling_seed(self, lease_number: int) -> int:
        """The vLLM seed of the run's n-th lease: from `seed` and the lease's place in the run (which a
        resumed run continues), never from lease ids, which start at the wall clock."""
        return (self.seed * 1_000_003 + lease_number) % (1 << 63)

    def _peer_may_lease(self, actor: str) -> bool:
        """Per-peer credit: an actor generates one lease at a time (two, if a rollout of its was lost
        and the lease has not expired yet), and actors that have never returned a valid rollout share
        half of all credits between them (at least two leases, so tiny configs still start). So made-up
        names, which cost nothing without CURVE, can hold at most half of the work in flight, and proven
        actors always keep the other half."""
        generating = [s for s in self._leases.values() if s.rollout is None]
        if sum(s.actor == actor for s in generating) >= 2:
            return False
        if actor in self._proven:
            return True
        unproven = sum(len(s.prompt_ids) for s in generating if s.actor not in self._proven)
        share = max(self.learner.max_inflight_prompts // 2, 2 * self.learner.lease_prompts)
        return unproven + self.learner.lease_prompts <= share

    def _refuse(self, counter: str, reason: str) -> None:
        if (counter, reason) == DUPLICATE:  # late, not wrong: counted, never logged as a refusal
            self.counters.duplicates_dropped += 1
            return
        setattr(self.counters, counter, getattr(self.counters, counter) + 1)
        key = reason.split(":")[0]  # fixed text: a peer cannot grow this table with made-up details
        self.problems[key] = self.problems.get(key, 0) + 1
        self.last_problem = reason
        self.refused += 1

    def _take_prompt(self) -> int:
        if self._released:
            return self._released.popleft()
        self._next_fresh += 1
        return self._next_fresh - 1

    def on_rollout(self, rollout: Rollout) -> bool:
        """Accept a rollout for judging. False for a late duplicate, a stranger's, or one that fails
        validation (its lease is then released at once: the prompts go to the next actor)."""
        if self.evals is not None and self.evals.holds(rollout.lease_id):
            return self._accepted(self.evals.on_rollout(rollout, self.version, self.vocab_size), rollout)
        state = self._leases.get(rollout.lease_id)
        if state is None or state.rollout is not None:
            self.counters.duplicates_dropped += 1
            return False
        if f"{rollout.actor_id}#{rollout.incarnation}" != state.actor:
            self._refuse("wrong_sender", "rollout from an actor the lease was not given to")
            return False
        problem = rollout_problem(rollout, len(state.prompt_ids) * self.rollout.samples_per_prompt,
                                  self.rollout.max_new_tokens, self.vocab_size)
        if problem is None and not state.version <= rollout.policy_version <= self.version:
            problem = (f"policy version outside what the lease allows: {rollout.policy_version} "
                       f"not in {state.version}..{self.version}")
        if problem is not None:
            self._refuse("rollouts_invalid", problem)
            self.release(self._leases.pop(rollout.lease_id).prompt_ids)
            return False
        self._proven.add(state.actor)
        state.rollout = rollout
        return self._accepted(None, rollout)

    def _accepted(self, refusal: Refusal | None, rollout: Rollout) -> bool:
        if refusal is not None:
            self._refuse(*refusal)
            return False
        self.phases.add(rollout)  # eval generation is actor time too
        self._score_queue.append(rollout.lease_id)
        return True

    # --------------------------------------------------------------- judges

    def judge_refusal(self, kind: str) -> str | None:
        """Why a judge of `kind` cannot serve this run, or None. A CAI judge's scores only say how
        much revision changed a sample and its pairs prefer text the policy never sampled: useless
        to an algorithm that trains on scores of its own samples."""
        if kind in PAIRS_ONLY_JUDGES and self.needs != "pairs":
            return f"judge kind {kind} gives preference pairs only; this learner trains on scores"
        return None

    def next_score_task(self, judge: str) -> ScoreTask | None:
        """The next rollout to judge, assigned to `judge` ("judge_id#incarnation")."""
        while self._score_queue:
            lease_id = self._score_queue.popleft()
            state = self._leases.get(lease_id)
            if state is None and self.evals is not None and (task := self.evals.score_task(lease_id, judge)):
                return task
            if state is None or state.rollout is None:
                continue  # expired while queued
            state.judge = judge
            tokens, lengths = self.prompts.pack(state.prompt_ids)
            r = state.rollout
            conversations = [self.prompts.conversation(i) for i in state.prompt_ids]
            return ScoreTask(lease_id, self.rollout.samples_per_prompt, tokens, lengths,
                             r.response_tokens, r.response_lengths, r.truncated, self.rollout.max_new_tokens,
                             [json.dumps(c) if c is not None else "" for c in conversations])
        return None

    def cancel_lease(self, lease_id: int) -> None:
        """A lease that never reached its actor: release its prompts at once."""
        state = self._leases.pop(lease_id, None)
        if state is not None:
            self.release(state.prompt_ids)
        elif self.evals is not None:
            self.evals.give_back(lease_id)

    def requeue_score(self, lease_id: int) -> None:
        """A score task could not be delivered; put it first in line for the next judge (and forget
        the judge it was meant for, so only the next assignee's answer counts)."""
        state = self._leases.get(lease_id)
        if state is not None:
            state.judge = None
            self._score_queue.appendleft(lease_id)
        elif self.evals is not None and self.evals.unassign(lease_id):
            self._score_queue.appendleft(lease_id)

    def on_scores(self, scores: Scores) -> list[ScoredPrompt] | EvalAnswers | None:
        """Complete a lease; returns its judged prompts (an eval lease's: its answers), or None for a late
        duplicate, a stranger's answer, or a malformed one (the task then goes to the next judge; the
        rollout is kept)."""
        if self.evals is not None and self.evals.holds(scores.lease_id):
            out = self.evals.on_scores(scores, self.vocab_size)
            if isinstance(out, EvalAnswers):
                return out
            self._refuse(*out)
            if out[0] == "scores_invalid":
                self.requeue_score(scores.lease_id)
            return None
        state = self._leases.get(scores.lease_id)
        k = self.rollout.samples_per_prompt
        n = len(state.prompt_ids) if state else 0
        if state is None or state.rollout is None:
            self.counters.duplicates_dropped += 1
            return None
        if state.judge != f"{scores.judge_id}#{scores.incarnation}":
            self._refuse("wrong_sender", "scores from a judge the task was not given to")
            return None
        problem = scores_problem(scores, n, k, self.rollout.max_new_tokens, self.vocab_size)
        if problem is not None:
            self._refuse("scores_invalid", problem)
            self.requeue_score(scores.lease_id)
            return None
        del self._leases[scores.lease_id]
        self.counters.leases_completed += 1
        pairs = valid_pairs(scores, n, k)
        self.counters.pairs_invalid += len(scores.pair_prompts) - len(pairs)
        r = state.rollout
        responses = unflatten(r.response_tokens, r.response_lengths)
        logprobs = unflatten(r.logprobs, r.response_lengths)
        revised = scores.revision_lengths
        revisions = unflatten(scores.revision_tokens, np.maximum(revised, 0))
        out = []
        for i, prompt_id in enumerate(state.prompt_ids):
            own = range(i * k, (i + 1) * k)
            out.append(ScoredPrompt(
                prompt_id, scores.lease_id, r.policy_version, self.prompts.get(prompt_id),
                responses[i * k:(i + 1) * k], logprobs[i * k:(i + 1) * k],
                np.asarray(scores.scores[i * k:(i + 1) * k], dtype=np.float32), r.truncated[i * k:(i + 1) * k],
                pairs=tuple((c, rj) for p, c, rj in pairs if p == i),
                revisions=tuple(revisions[j] if revised[j] >= 0 else None for j in own) if np.any(revised >= 0) else (),
            ))
        self._buffered.update(state.prompt_ids)
        return out

    def on_judge_failed(self, failed: JudgeFailed) -> bool:
        """The assigned judge gave up on a task: drop the rollout and lease its prompts again
        (fresh samples), rather than hand the same task to the next judge. False if not live."""
        state = self._leases.get(failed.lease_id)
        if state is None and self.evals is not None and self.evals.holds(failed.lease_id):
            return self._eval_judge_failed(failed)
        if state is None:
            self.counters.duplicates_dropped += 1
            return False
        if state.judge != f"{failed.judge_id}#{failed.incarnation}":
            self._refuse("wrong_sender", "judge failure from a judge the task was not given to")
            return False
        self.release(self._leases.pop(failed.lease_id).prompt_ids)
        self.counters.judge_failures += 1
        return True

    def _eval_judge_failed(self, failed: JudgeFailed) -> bool:
        if self.evals.judge_of(failed.lease_id) != f"{failed.judge_id}#{failed.incarnation}":
            self._refuse("wrong_sender", "judge failure from a judge the task was not given to")
            return False
        self.evals.give_back(failed.lease_id)  # answered afresh, like a training lease's prompts
        self.counters.judge_failures += 1
        return True

    # --------------------------------------------------------------- learner side

    def expire(self) -> list[int]:
        """Release the prompts of every lease past its deadline; returns the expired lease ids."""
        now = self.clock()
        expired = [lease_id for lease_id, s in self._leases.items() if s.deadline <= now]
        for lease_id in expired:
            self.release(self._leases.pop(lease_id).prompt_ids)
            self.counters.leases_expired += 1
        return expired + (self.evals.expire(now) if self.evals is not None else [])

    def peer_died(self, peer: str) -> int:
        """A dead actor's leases expire now; a dead judge's tasks go back in line (the rollouts are
        kept, so nothing is generated twice). Returns how many leases were handed on."""
        self.actor_versions.pop(peer, None)  # a dead actor's version no longer holds the metric down
        self._proven.discard(peer)
        handed_on = 0
        for lease_id, state in list(self._leases.items()):
            if state.actor == peer and state.rollout is None:
                self.release(self._leases.pop(lease_id).prompt_ids)
                self.counters.leases_expired += 1
                handed_on += 1
            elif state.judge == peer:
                state.judge = None
                self._score_queue.appendleft(lease_id)
                handed_on += 1
        if self.evals is not None:
            lost, judged = self.evals.peer_died(peer)
            self._score_queue.extendleft(judged)
            handed_on += lost + len(judged)
        return handed_on

    def release(self, prompt_ids: list[int]) -> None:
        """Give prompts back to be leased again, ahead of fresh ones (expiry, staleness)."""
        self._released.extend(prompt_ids)
        self.counters.prompts_released += len(prompt_ids)

    def consumed(self, prompt_ids: list[int]) -> None:
        self._buffered.difference_update(prompt_ids)

    def state_dict(self) -> dict:
        """The data position, for a checkpoint: every prompt not yet consumed by the learner (leased,
        being judged, or buffered) is listed as released, so a resumed learner leases it again."""
        in_flight = [p for s in self._leases.values() for p in s.prompt_ids] + sorted(self._buffered)
        return {"next_fresh": self._next_fresh, "released": list(self._released) + in_flight,
                "counters": dataclasses.asdict(self.counters)}

    def load_state_dict(self, state: dict) -> None:
        self._next_fresh = int(state["next_fresh"])
        self._released = deque(int(p) for p in state["released"])
        self.counters = Counters(**state["counters"])

    def publish(self, version: int) -> None:
        self.version = version
