"""The coordinator's side of live evaluation: one round of greedy answers to the eval prompts at a time.

Eval prompts have an id space of their own (0..E-1, positions in the eval set, never in the training
stream), and their leases live here, apart from the coordinator's training leases: so they take no
training credit, never reach the learner's batch, a checkpoint's data position or samples.jsonl, and
their seeds do not move the training leases' (which count training leases only).

An eval lease moves like a training one: issued -> generated (queued for a judge) -> judging -> answered.
A lost one (expiry, a dead actor, a judge that gave up) puts its prompts back in the round's queue. A new
round forgets the open one whole: results for its leases come back to a book that no longer holds them
and are dropped as duplicates. The learner's loop owns the rounds (live_eval.py); this book only serves
the one it opened last, with the reference answers it was given (then each prompt's score task carries
two candidates: the answer, then the reference's, so a pairwise judge compares them directly).
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from tiller.learner.prompts import PromptStream
from tiller.learner.validation import rollout_problem, scores_problem
from tiller.protocol.messages import Lease, Rollout, Scores, ScoreTask, unflatten

DUPLICATE = ("duplicates_dropped", "")  # not a refusal: a result for a lease answered already
Refusal = tuple[str, str]  # (the coordinator's counter, the reason) - see Coordinator._refuse


@dataclass(frozen=True)
class Reference:
    """The answers the reference round gave, by eval prompt index."""

    responses: list[np.ndarray]  # E int32 arrays
    truncated: np.ndarray  # bool [E]


@dataclass(frozen=True)
class EvalAnswer:
    index: int  # in the eval set
    policy_version: int  # the weights that wrote it (may be older than the round: the metrics say which)
    response: np.ndarray  # int32 token ids
    truncated: bool
    score: float
    reference_score: float | None  # the reference answer's score in the same judgement; None: no reference yet


@dataclass(frozen=True)
class EvalAnswers:
    """One judged eval lease, for the learner's eval collector (never its training queue)."""

    round_id: int
    answers: list[EvalAnswer]


@dataclass
class _EvalLease:
    actor: str  # "actor_id#incarnation"
    indices: list[int]
    deadline: float
    version: int
    rollout: Rollout | None = None
    judge: str | None = None


@dataclass
class EvalCounters:
    rounds: int = 0
    leases_issued: int = 0
    leases_lost: int = 0  # expired, their actor died, or their judge gave up: leased again in the round
    answers: int = 0


@dataclass
class EvalBook:
    prompts: PromptStream  # the eval set, tokenized as training prompts are
    lease_prompts: int  # prompts per eval lease
    max_new_tokens: int
    lease_timeout_s: float
    round_id: int = -1
    counters: EvalCounters = field(default_factory=EvalCounters)

    def __post_init__(self) -> None:
        self._pending: deque[int] = deque()
        self._leases: dict[int, _EvalLease] = {}
        self._reference: Reference | None = None

    def open(self, round_id: int, reference: Reference | None) -> None:
        """Start round `round_id` over every eval prompt; the open round, if any, is forgotten."""
        self.round_id, self._reference = round_id, reference
        self._pending = deque(range(len(self.prompts)))
        self._leases.clear()
        self.counters.rounds += 1

    @property
    def generating(self) -> int:
        """Eval leases whose rollout has not come back."""
        return sum(s.rollout is None for s in self._leases.values())

    def holds(self, lease_id: int) -> bool:
        return lease_id in self._leases

    def wants(self, actor: str) -> bool:
        """Prompts wait for an actor, and this one is not generating an eval lease already."""
        return bool(self._pending) and not any(s.actor == actor and s.rollout is None for s in self._leases.values())

    def lease(self, lease_id: int, actor: str, version: int, now: float, learner_incarnation: int) -> Lease:
        indices = [self._pending.popleft() for _ in range(min(self.lease_prompts, len(self._pending)))]
        self._leases[lease_id] = _EvalLease(actor, indices, now + self.lease_timeout_s, version)
        self.counters.leases_issued += 1
        tokens, lengths = self.prompts.pack(indices)
        return Lease(lease_id, version, np.asarray(indices, np.int64), tokens, lengths, samples_per_prompt=1,
                     max_new_tokens=self.max_new_tokens, temperature=0.0, top_p=1.0, seed=0,
                     deadline_s=self.lease_timeout_s, learner_incarnation=learner_incarnation, evaluation=True)

    def on_rollout(self, rollout: Rollout, version: int, vocab_size: int | None) -> Refusal | None:
        state = self._leases[rollout.lease_id]
        if state.rollout is not None:
            return DUPLICATE
        if f"{rollout.actor_id}#{rollout.incarnation}" != state.actor:
            return "wrong_sender", "rollout from an actor the lease was not given to"
        problem = rollout_problem(rollout, len(state.indices), self.max_new_tokens, vocab_size)
        if problem is None and not state.version <= rollout.policy_version <= version:
            problem = (f"policy version outside what the lease allows: {rollout.policy_version} "
                       f"not in {state.version}..{version}")
        if problem is not None:
            self.give_back(rollout.lease_id)
            return "rollouts_invalid", problem
        state.rollout = rollout
        return None

    def score_task(self, lease_id: int, judge: str) -> ScoreTask | None:
        """The task for a generated eval lease (None if it is no longer held), assigned to `judge`."""
        state = self._leases.get(lease_id)
        if state is None or state.rollout is None:
            return None
        state.judge = judge
        r, ref = state.rollout, self._reference
        answers = unflatten(r.response_tokens, r.response_lengths)
        if ref is None:
            responses, truncated = answers, np.asarray(r.truncated, bool)
        else:  # prompt-major: the answer, then the reference's
            responses = [x for i, a in zip(state.indices, answers) for x in (a, ref.responses[i])]
            truncated = np.asarray([x for i, t in zip(state.indices, r.truncated) for x in (t, ref.truncated[i])], bool)
        tokens, lengths = self.prompts.pack(state.indices)
        flat = np.concatenate(responses).astype(np.int32) if responses else np.zeros(0, np.int32)
        conversations = [self.prompts.conversation(i) for i in state.indices]
        return ScoreTask(lease_id, 1 if ref is None else 2, tokens, lengths, flat,
                         np.asarray([len(x) for x in responses], np.int32), truncated, self.max_new_tokens,
                         [json.dumps(c) if c is not None else "" for c in conversations], evaluation=True)

    def on_scores(self, scores: Scores, vocab_size: int | None) -> EvalAnswers | Refusal:
        state = self._leases[scores.lease_id]
        if state.rollout is None:
            return DUPLICATE
        if state.judge != f"{scores.judge_id}#{scores.incarnation}":
            return "wrong_sender", "scores from a judge the task was not given to"
        k = 1 if self._reference is None else 2
        problem = scores_problem(scores, len(state.indices), k, self.max_new_tokens, vocab_size)
        if problem is not None:
            state.judge = None  # the coordinator puts the task first in line again
            return "scores_invalid", problem
        del self._leases[scores.lease_id]
        r = state.rollout
        responses = unflatten(r.response_tokens, r.response_lengths)
        values = [float(v) for v in scores.scores]
        out = [EvalAnswer(index, r.policy_version, responses[n], bool(r.truncated[n]), values[n * k],
                          values[n * k + 1] if k == 2 else None) for n, index in enumerate(state.indices)]
        self.counters.answers += len(out)
        return EvalAnswers(self.round_id, out)

    def judge_of(self, lease_id: int) -> str | None:
        state = self._leases.get(lease_id)
        return None if state is None else state.judge

    def give_back(self, lease_id: int) -> None:
        """The lease's prompts wait for an actor again (its rollout, if any, is dropped)."""
        state = self._leases.pop(lease_id, None)
        if state is not None:
            self._pending.extendleft(reversed(state.indices))
            self.counters.leases_lost += 1

    def unassign(self, lease_id: int) -> bool:
        """Forget the judge a generated lease went to; True if it waits for a judge again."""
        state = self._leases.get(lease_id)
        if state is None or state.rollout is None:
            return False
        state.judge = None
        return True

    def expire(self, now: float) -> list[int]:
        """Leases past their deadline; their prompts are leased again."""
        expired = [lease_id for lease_id, s in self._leases.items() if s.deadline <= now]
        for lease_id in expired:
            self.give_back(lease_id)
        return expired

    def peer_died(self, peer: str) -> tuple[int, list[int]]:
        """A dead actor's eval leases go back to the round; a dead judge's tasks wait for the next judge.
        Returns (leases given back, lease ids to put in the judges' line again)."""
        lost = [i for i, s in self._leases.items() if s.actor == peer and s.rollout is None]
        for lease_id in lost:
            self.give_back(lease_id)
        judged = [i for i, s in self._leases.items() if s.judge == peer]
        for lease_id in judged:
            self._leases[lease_id].judge = None
        return len(lost), judged
