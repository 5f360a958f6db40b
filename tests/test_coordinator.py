"""Lease bookkeeping: credits, expiry and re-leasing, duplicate drops, judged prompts out."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from tiller.config import LearnerConfig, RolloutConfig
from tiller.learner.coordinator import Coordinator
from tiller.learner.eval_book import EvalAnswers, EvalBook, Reference
from tiller.learner.prompts import PromptStream
from tiller.protocol.messages import JudgeFailed, Lease, LeaseRequest, Rollout, Scores, Shutdown, Wait

K = 2


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def make(lease_prompts=2, inflight=4, timeout=10.0):
    prompts = PromptStream([np.array([i + 3, i + 4], np.int32) for i in range(10)], [""] * 10)
    clock = Clock()
    coordinator = Coordinator(
        prompts, LearnerConfig(lease_prompts=lease_prompts, max_inflight_prompts=inflight, lease_timeout_s=timeout),
        RolloutConfig(samples_per_prompt=K, max_new_tokens=3), clock=clock,
    )
    return coordinator, clock


def rollout_for(lease: Lease, version=0, actor="a") -> Rollout:
    n = len(lease.prompt_ids) * K
    return Rollout(actor, 1, lease.lease_id, 1, version, np.arange(n * 3, dtype=np.int32),
                   np.full(n, 3, np.int32), np.zeros(n * 3, np.float32), np.zeros(n, bool), 0.1)


def judged(lease_id: int, scores, pairs=(), revisions=None, judge="j", incarnation=1) -> Scores:
    """A Scores message: `pairs` as (prompt, chosen, rejected); `revisions` one token list or None per sample."""
    columns = np.asarray(pairs, np.int32).reshape(-1, 3)
    revisions = revisions or [None] * len(scores)
    lengths = np.array([-1 if r is None else len(r) for r in revisions], np.int32)
    tokens = np.array([t for r in revisions if r is not None for t in r], np.int32)
    return Scores(judge, incarnation, lease_id, np.asarray(scores, np.float32), columns[:, 0].copy(),
                  columns[:, 1].copy(), columns[:, 2].copy(), tokens, lengths, 0.01, {"tasks": 1.0})


def scores_for(lease: Lease, pairs=((0, 0, 1),), **kw) -> Scores:
    """Prompt 0 prefers sample 0 over sample 1; the other prompts have no pair."""
    return judged(lease.lease_id, np.arange(len(lease.prompt_ids) * K), pairs, **kw)


def test_a_lease_flows_to_a_judge_and_back_as_scored_prompts():
    c, _ = make()
    lease = c.on_lease_request(LeaseRequest("a", 1, 0))
    assert isinstance(lease, Lease) and lease.prompt_ids.tolist() == [0, 1]
    assert lease.prompt_tokens.tolist() == [3, 4, 4, 5] and lease.prompt_lengths.tolist() == [2, 2]
    assert c.next_score_task("j#1") is None
    assert c.on_rollout(rollout_for(lease, version=0))
    task = c.next_score_task("j#1")
    assert task.lease_id == lease.lease_id and task.response_lengths.tolist() == [3, 3, 3, 3]
    scored = c.on_scores(scores_for(lease))
    assert [s.prompt_id for s in scored] == [0, 1]
    assert scored[0].pairs == ((0, 1),) and scored[1].pairs == () and scored[0].revisions == ()
    np.testing.assert_array_equal(scored[0].responses[1], [3, 4, 5])
    assert scored[1].scores.tolist() == [2.0, 3.0]
    assert c.counters.leases_completed == 1


def test_credits_bound_the_prompts_in_flight():
    c, _ = make(lease_prompts=2, inflight=4)
    assert isinstance(c.on_lease_request(LeaseRequest("a", 1, 0)), Lease)
    second = c.on_lease_request(LeaseRequest("b", 1, 0))
    assert isinstance(second, Lease)
    assert isinstance(c.on_lease_request(LeaseRequest("c", 1, 0)), Wait)
    assert c.on_rollout(rollout_for(second, actor="b"))
    c.next_score_task("j#1")
    assert c.on_scores(scores_for(second))  # 2 prompts now buffered in the learner, still in flight
    assert isinstance(c.on_lease_request(LeaseRequest("c", 1, 0)), Wait)
    c.consumed(second.prompt_ids.tolist())
    assert isinstance(c.on_lease_request(LeaseRequest("c", 1, 0)), Lease)


def test_expired_lease_prompts_are_leased_again_and_late_results_dropped():
    c, clock = make(timeout=10.0)
    first = c.on_lease_request(LeaseRequest("a", 1, 0))
    clock.now = 11.0
    assert c.expire() == [first.lease_id]
    again = c.on_lease_request(LeaseRequest("b", 1, 0))
    assert again.prompt_ids.tolist() == first.prompt_ids.tolist() and again.lease_id != first.lease_id
    assert not c.on_rollout(rollout_for(first))  # the dead actor's late work
    assert not c.on_rollout(rollout_for(again, actor="a"))  # not the actor it was leased to
    assert c.on_rollout(rollout_for(again, actor="b"))
    assert not c.on_rollout(rollout_for(again, actor="b"))  # redelivered
    c.next_score_task("j#1")
    assert c.on_scores(scores_for(again)) is not None
    assert c.on_scores(scores_for(again)) is None  # a second judge's duplicate
    assert c.counters.duplicates_dropped == 3 and c.counters.wrong_sender == 1 and c.counters.leases_expired == 1


def test_scores_only_from_the_judge_the_task_went_to():
    c, _ = make()
    lease = c.on_lease_request(LeaseRequest("a", 1, 0))
    c.on_rollout(rollout_for(lease))
    c.next_score_task("j#1")
    assert c.on_scores(scores_for(lease, judge="intruder", incarnation=9)) is None
    out = c.on_scores(scores_for(lease, pairs=((0, 1, 1), (1, 1, 0))))  # prompt 0 names one sample twice: no pair
    assert [s.pairs for s in out] == [(), ((1, 0),)]
    assert c.counters.pairs_invalid == 1


def test_released_prompts_go_first_and_fresh_ones_follow():
    c, _ = make()
    c.release([7, 8])
    assert c.on_lease_request(LeaseRequest("a", 1, 0)).prompt_ids.tolist() == [7, 8]
    assert c.on_lease_request(LeaseRequest("a", 1, 0)).prompt_ids.tolist() == [0, 1]


def test_wrong_sized_results_are_refused_and_their_prompts_leased_again():
    c, _ = make(inflight=20)
    make_bad = [
        lambda r: replace(r, response_tokens=r.response_tokens[:3], response_lengths=r.response_lengths[:1],
                          logprobs=r.logprobs[:3], truncated=r.truncated[:1]),
        lambda r: replace(r, response_tokens=r.response_tokens[:-1]),  # lengths promise one token more than sent
        lambda r: replace(r, response_lengths=r.response_lengths.astype(np.float64)),
    ]
    for i, bad in enumerate(make_bad):
        lease = c.on_lease_request(LeaseRequest("a", 1, 0))
        assert not c.on_rollout(bad(rollout_for(lease)))
        # refused at once: the same prompts go to the next actor, no waiting for the lease to expire
        assert c.on_lease_request(LeaseRequest(f"b{i}", 1, 0)).prompt_ids.tolist() == lease.prompt_ids.tolist()
    assert c.counters.rollouts_invalid == 3 and c.counters.duplicates_dropped == 0
    assert set(c.problems) == {"response count disagrees with the lease", "response lengths disagree with the token "
                               "or logprob count", "response tokens and lengths must be 1-D integer arrays"}


def test_a_malformed_judge_answer_sends_the_task_to_the_next_judge():
    c, _ = make()
    lease = c.on_lease_request(LeaseRequest("a", 1, 0))
    assert c.on_rollout(rollout_for(lease))
    lying = scores_for(lease)
    bad_answers = [
        judged(lease.lease_id, np.zeros(1)),  # one score for four samples
        judged(lease.lease_id, np.full(2 * K, np.nan)),
        judged(lease.lease_id, np.zeros(2 * K), revisions=[[3] * 4, None, None, None]),  # past max_new_tokens
        replace(lying, chosen=lying.chosen[:0]),  # pair columns of different lengths
        replace(lying, revision_lengths=lying.revision_lengths.astype(np.float32)),
    ]
    for answer in bad_answers:
        assert c.next_score_task("j#1").lease_id == lease.lease_id  # back in line after each refusal
        assert c.on_scores(answer) is None
    assert c.counters.scores_invalid == len(bad_answers)
    c.next_score_task("j#1")
    out = c.on_scores(scores_for(lease, pairs=((0, 5, 0), (2, 0, 1), (0, 2, 0))))  # no such sample/prompt/revision
    assert [s.pairs for s in out] == [(), ()] and c.counters.pairs_invalid == 3


def test_non_finite_or_positive_logprobs_and_impossible_versions_are_refused():
    c, _ = make(inflight=10)
    c.publish(2)
    cases = {
        "logprobs hold NaN or infinity": lambda r: replace(r, logprobs=np.full_like(r.logprobs, np.nan)),
        "logprobs above 0, so not log-probabilities": lambda r: replace(r, logprobs=r.logprobs + 0.5),
        "policy version outside what the lease allows": lambda r: replace(r, policy_version=3),
    }
    for reason, bad in cases.items():
        lease = c.on_lease_request(LeaseRequest("a", 1, 2))
        assert not c.on_rollout(bad(rollout_for(lease, version=2)))
        assert reason in c.last_problem
    lease = c.on_lease_request(LeaseRequest("a", 1, 2))
    assert not c.on_rollout(rollout_for(lease, version=1))  # older than the version the lease was issued at
    lease = c.on_lease_request(LeaseRequest("a", 1, 2))
    assert c.on_rollout(rollout_for(lease, version=2))
    assert c.counters.rollouts_invalid == 4 and c.problems["policy version outside what the lease allows"] == 2


def test_per_peer_credit_and_the_unproven_share():
    # 32 prompts of credit, leases of 4: strangers (never returned a valid rollout) share 16 prompts
    c, _ = make(lease_prompts=4, inflight=32)
    strangers = [c.on_lease_request(LeaseRequest(f"made-up-{i}", 1, -2**63)) for i in range(6)]
    assert [isinstance(r, Lease) for r in strangers] == [True] * 4 + [False] * 2
    assert c.actor_versions == {f"made-up-{i}#1": -1 for i in range(4)}  # clamped; the refused are not listed
    first = c.on_lease_request(LeaseRequest("worker", 1, 0))
    assert isinstance(first, Wait)  # worker is unproven too, and the unproven share is spent
    c.peer_died("made-up-0#1")
    first = c.on_lease_request(LeaseRequest("worker", 1, 0))
    assert c.on_rollout(rollout_for(first, actor="worker"))  # proven from now on
    held = [c.on_lease_request(LeaseRequest("worker", 1, 0)) for _ in range(3)]
    assert [isinstance(r, Lease) for r in held] == [True, True, False]  # at most two generating at once
    assert c.counters.waits_peer_credit == 4 and "made-up-0#1" not in c.actor_versions


def test_an_undelivered_task_forgets_the_judge_it_was_meant_for():
    c, _ = make()
    lease = c.on_lease_request(LeaseRequest("a", 1, 0))
    c.on_rollout(rollout_for(lease))
    c.next_score_task("j#1")
    c.requeue_score(lease.lease_id)
    assert c.on_scores(scores_for(lease)) is None  # j#1 never got it
    assert c.next_score_task("k#1").lease_id == lease.lease_id
    assert c.on_scores(scores_for(lease, judge="k")) is not None


def test_a_revision_is_a_candidate_of_its_prompt():
    c, _ = make()
    lease = c.on_lease_request(LeaseRequest("a", 1, 0))
    c.on_rollout(rollout_for(lease))
    c.next_score_task("j#1")
    revisions = [None, [7, 8], [], None]  # prompt 0 sample 1 revised; prompt 1 sample 0 revised to nothing
    out = c.on_scores(scores_for(lease, pairs=((0, K + 1, 1), (1, K + 0, 0)), revisions=revisions))
    assert out[0].pairs == ((K + 1, 1),) and out[1].pairs == ()  # an empty revision is no candidate
    np.testing.assert_array_equal(out[0].candidate(K + 1), [7, 8])
    np.testing.assert_array_equal(out[0].candidate(1), out[0].responses[1])
    assert out[0].revisions[0] is None and len(out[1].revisions[0]) == 0


def test_token_ids_outside_the_vocabulary_are_refused():
    prompts = PromptStream([np.array([3, 4], np.int32)] * 4, [""] * 4)
    c = Coordinator(prompts, LearnerConfig(lease_prompts=2), RolloutConfig(samples_per_prompt=K), vocab_size=10)
    lease = c.on_lease_request(LeaseRequest("a", 1, 0))
    assert not c.on_rollout(rollout_for(lease))  # its token ids run to 11
    lease = c.on_lease_request(LeaseRequest("a", 1, 0))
    ok = rollout_for(lease)
    assert c.on_rollout(replace(ok, response_tokens=ok.response_tokens % 10))
    c.next_score_task("j#1")
    assert c.on_scores(scores_for(lease, revisions=[[10], None, None, None])) is None
    c.next_score_task("j#1")
    assert c.on_scores(scores_for(lease, revisions=[[9], None, None, None])) is not None


def test_done_coordinator_tells_actors_to_stop_and_reports_versions():
    c, _ = make()
    c.publish(3)
    lease = c.on_lease_request(LeaseRequest("a", 9, 2))
    assert lease.latest_version == 3 and c.actor_versions == {"a#9": 2}
    c.done = True
    assert isinstance(c.on_lease_request(LeaseRequest("a", 9, 3)), Shutdown)


def test_a_dead_actor_loses_its_leases_and_a_dead_judge_its_tasks():
    c, _ = make()
    generating = c.on_lease_request(LeaseRequest("a", 1, 0))
    being_judged = c.on_lease_request(LeaseRequest("b", 1, 0))
    c.on_rollout(rollout_for(being_judged, actor="b"))
    assert c.next_score_task("j#1").lease_id == being_judged.lease_id
    assert c.peer_died("a#1") == 1  # its lease expires now, not at the deadline
    assert c.on_lease_request(LeaseRequest("b", 1, 0)).prompt_ids.tolist() == generating.prompt_ids.tolist()
    assert c.peer_died("j#1") == 1  # the rollout stays; the next judge gets it
    assert c.next_score_task("j#2").lease_id == being_judged.lease_id
    assert c.on_scores(scores_for(being_judged)) is None  # "j#1" is no longer the assignee
    assert c.on_scores(scores_for(being_judged, incarnation=2)) is not None


def test_a_task_the_judge_gave_up_on_is_generated_afresh():
    c, _ = make()
    lease = c.on_lease_request(LeaseRequest("a", 1, 0))
    c.on_rollout(rollout_for(lease))
    c.next_score_task("j#1")
    assert not c.on_judge_failed(JudgeFailed("other", 1, lease.lease_id, "not its task"))
    assert c.on_judge_failed(JudgeFailed("j", 1, lease.lease_id, "RuntimeError: engine"))
    assert c.counters.judge_failures == 1
    assert c.on_scores(scores_for(lease)) is None  # the lease is gone
    assert c.on_lease_request(LeaseRequest("a", 1, 0)).prompt_ids.tolist() == lease.prompt_ids.tolist()


def test_a_scores_algorithm_refuses_judges_that_only_give_pairs():
    prompts = PromptStream([np.array([3, 4], np.int32)], [""])
    grpo = Coordinator(prompts, LearnerConfig(algorithm="grpo"), RolloutConfig(), needs="scores")
    assert "pairs only" in grpo.judge_refusal("cai")
    assert grpo.judge_refusal("rule") is None and grpo.judge_refusal("llm_pairwise") is None
    dpo = Coordinator(prompts, LearnerConfig(), RolloutConfig(), needs="pairs")
    assert dpo.judge_refusal("cai") is None


def test_sampling_seeds_follow_the_config_seed_not_the_clock():
    def seeds(seed: int) -> list[int]:
        prompts = PromptStream([np.array([3, 4], np.int32)] * 10, [""] * 10)
        c = Coordinator(prompts, LearnerConfig(lease_prompts=2, max_inflight_prompts=16), RolloutConfig(), seed=seed)
        return [c.on_lease_request(LeaseRequest(f"a{i}", 1, 0)).seed for i in range(3)]

    first = seeds(7)
    assert seeds(7) == first and seeds(8) != first  # two starts (two clocks), same seeds
    assert len(set(first)) == 3


def test_synchronous_mode_keeps_one_batch_out_and_nothing_while_training():
    prompts = PromptStream([np.array([3, 4], np.int32)] * 20, [""] * 20)
    c = Coordinator(prompts, LearnerConfig(mode="sync", batch_size=5, lease_prompts=2, max_inflight_prompts=16),
                    RolloutConfig(samples_per_prompt=K, max_new_tokens=3))
    leases = [c.on_lease_request(LeaseRequest(f"a{i}", 1, 0)) for i in range(4)]
    assert [len(x.prompt_ids) if isinstance(x, Lease) else 0 for x in leases] == [2, 2, 1, 0]  # 5 = one batch
    for lease in leases[:3]:
        assert c.on_rollout(rollout_for(lease, actor=lease_owner(c, lease)))
        c.next_score_task("j#1")
        assert c.on_scores(scores_for(lease)) is not None
    assert isinstance(c.on_lease_request(LeaseRequest("b", 1, 0)), Wait)  # judged, in the learner's batch
    c.consumed([0])  # a prompt without a preference: its credit goes to a new prompt at once
    assert len(c.on_lease_request(LeaseRequest("b", 1, 0)).prompt_ids) == 1
    c.publish(1)
    c.consumed([1, 2, 3, 4])  # the step is trained and published: the next round opens at version 1
    lease = c.on_lease_request(LeaseRequest("c", 1, 1))
    assert len(lease.prompt_ids) == 2 and lease.latest_version == 1


def lease_owner(c: Coordinator, lease: Lease) -> str:
    return c._leases[lease.lease_id].actor.split("#")[0]


def test_no_prompt_is_leased_that_would_be_too_stale_to_train():
    # lag 1, a version per step of 2 prompts: at most (1 + 1) x 2 = 4 prompts may be out, whatever
    # max_inflight_prompts allows; the 5th would come up for training two versions late
    prompts = PromptStream([np.array([3, 4], np.int32)] * 20, [""] * 20)
    c = Coordinator(prompts, LearnerConfig(batch_size=2, max_policy_lag=1, sync_every=1, lease_prompts=1,
                                           max_inflight_prompts=64), RolloutConfig(samples_per_prompt=K))
    replies = [c.on_lease_request(LeaseRequest(f"a{i}", 1, 0)) for i in range(6)]
    assert [isinstance(r, Lease) for r in replies] == [True] * 4 + [False] * 2
    c.cancel_lease(replies[0].lease_id)  # one lease fewer out: one more may go
    assert isinstance(c.on_lease_request(LeaseRequest("b", 1, 0)), Lease)


# ------------------------------------------------------------------ live evaluation's leases (eval_book.py)

EVAL_PROMPTS = 3


def with_evals(lease_prompts=2, inflight=4, timeout=10.0, eval_lease_prompts=2, opened=True):
    c, clock = make(lease_prompts, inflight, timeout)
    eval_set = PromptStream([np.array([20 + i], np.int32) for i in range(EVAL_PROMPTS)], [""] * EVAL_PROMPTS)
    c.evals = EvalBook(eval_set, eval_lease_prompts, max_new_tokens=3, lease_timeout_s=timeout)
    if opened:
        c.evals.open(0, None)
    return c, clock


def eval_rollout(lease: Lease, version=0, actor="a") -> Rollout:
    n = len(lease.prompt_ids)  # one greedy answer per prompt
    return Rollout(actor, 1, lease.lease_id, 1, version, np.full(n * 2, 5, np.int32), np.full(n, 2, np.int32),
                   np.zeros(n * 2, np.float32), np.zeros(n, bool), 0.1)


def test_eval_leases_go_first_and_take_no_training_credit():
    c, _ = with_evals(inflight=4, opened=False)
    train = [c.on_lease_request(LeaseRequest(f"t{i}", 1, 0)) for i in range(2)]  # every training credit spent
    assert isinstance(c.on_lease_request(LeaseRequest("t9", 1, 0)), Wait)
    c.evals.open(0, None)
    first = c.on_lease_request(LeaseRequest("a", 1, 0))
    assert first.evaluation and first.prompt_ids.tolist() == [0, 1] and first.prompt_tokens.tolist() == [20, 21]
    assert (first.samples_per_prompt, first.temperature, first.top_p) == (1, 0.0, 1.0)
    assert isinstance(c.on_lease_request(LeaseRequest("a", 1, 0)), Wait)  # one eval lease each; training is full
    second = c.on_lease_request(LeaseRequest("b", 1, 0))
    assert second.evaluation and second.prompt_ids.tolist() == [2]
    # training is untouched: credits, prompts out, the lease count the sampling seeds follow, the data position
    assert c.inflight_prompts == 4 and c.counters.leases_issued == 2 and c.evals.counters.leases_issued == 2
    assert sorted(c.state_dict()["released"]) == [0, 1, 2, 3]
    assert len({first.lease_id, second.lease_id, *(t.lease_id for t in train)}) == 4  # one id space for leases


def test_eval_answers_come_out_as_eval_answers_never_as_trained_prompts():
    c, _ = with_evals()
    lease = c.on_lease_request(LeaseRequest("a", 1, 0))
    assert c.on_rollout(eval_rollout(lease))
    task = c.next_score_task("j#1")
    assert task.evaluation and task.samples_per_prompt == 1 and task.response_lengths.tolist() == [2, 2]
    out = c.on_scores(judged(lease.lease_id, [0.25, 0.75]))
    assert isinstance(out, EvalAnswers) and out.round_id == 0
    assert [(a.index, a.score, a.reference_score) for a in out.answers] == [(0, 0.25, None), (1, 0.75, None)]
    assert c.on_scores(judged(lease.lease_id, [0.25, 0.75])) is None  # a second judge's duplicate
    assert c.counters.leases_completed == 0 and c.counters.duplicates_dropped == 1 and c._buffered == set()
    assert c.state_dict()["released"] == [] and c.state_dict()["next_fresh"] == 0


def test_a_later_round_is_judged_beside_the_reference_and_supersedes_the_open_one():
    c, _ = with_evals(eval_lease_prompts=3)
    stale = c.on_lease_request(LeaseRequest("a", 1, 0))
    reference = Reference([np.array([7], np.int32), np.array([8, 8], np.int32), np.array([], np.int32)],
                          np.array([False, True, False]))
    c.publish(1)
    c.evals.open(1, reference)  # round 0 never answered: forgotten
    assert not c.on_rollout(eval_rollout(stale)) and c.counters.duplicates_dropped == 1
    lease = c.on_lease_request(LeaseRequest("a", 1, 1))
    assert c.on_rollout(eval_rollout(lease, version=1))
    task = c.next_score_task("j#1")
    assert task.samples_per_prompt == 2 and task.response_lengths.tolist() == [2, 1, 2, 2, 2, 0]  # answer, reference
    assert task.response_tokens.tolist() == [5, 5, 7, 5, 5, 8, 8, 5, 5]
    assert task.truncated.tolist() == [False, False, False, True, False, False]
    out = c.on_scores(judged(lease.lease_id, [1, 0, 0.5, 0.5, 0, 1]))
    assert [(a.index, a.score, a.reference_score, a.policy_version) for a in out.answers] == [
        (0, 1.0, 0.0, 1), (1, 0.5, 0.5, 1), (2, 0.0, 1.0, 1)]


def test_lost_eval_leases_are_leased_again_in_their_round():
    c, clock = with_evals(timeout=10.0)
    expiring = c.on_lease_request(LeaseRequest("a", 1, 0))
    dying = c.on_lease_request(LeaseRequest("b", 1, 0))
    clock.now = 11.0
    assert c.expire() == [expiring.lease_id, dying.lease_id]
    again = c.on_lease_request(LeaseRequest("a", 1, 0))
    assert again.evaluation and again.prompt_ids.tolist() == [2, 0]  # each lease's back at the front, the last first
    c.on_rollout(eval_rollout(again))
    c.next_score_task("j#1")
    assert not c.on_judge_failed(JudgeFailed("other", 1, again.lease_id, "not its task"))
    assert c.on_judge_failed(JudgeFailed("j", 1, again.lease_id, "RuntimeError"))  # answered afresh
    assert c.on_lease_request(LeaseRequest("b", 1, 0)).prompt_ids.tolist() == [2, 0]
    assert c.peer_died("b#1") == 1 and c.on_lease_request(LeaseRequest("c", 1, 0)).prompt_ids.tolist() == [2, 0]
    assert c.evals.counters.leases_lost == 4 and c.counters.leases_expired == 0 and c.counters.prompts_released == 0


def test_malformed_eval_results_are_refused_and_counted_like_training_ones():
    c, _ = with_evals()
    lease = c.on_lease_request(LeaseRequest("a", 1, 0))
    assert not c.on_rollout(eval_rollout(lease, actor="intruder"))
    bad = eval_rollout(lease)
    assert not c.on_rollout(replace(bad, logprobs=np.full_like(bad.logprobs, np.nan)))  # refused: leased again
    assert c.counters.wrong_sender == 1 and c.counters.rollouts_invalid == 1
    lease = c.on_lease_request(LeaseRequest("b", 1, 0))
    assert lease.prompt_ids.tolist() == [0, 1] and c.on_rollout(eval_rollout(lease, actor="b"))
    c.next_score_task("j#1")
    assert c.on_scores(judged(lease.lease_id, [np.nan, 0.0])) is None  # back in line for the next judge
    assert c.counters.scores_invalid == 1 and c.next_score_task("k#1").lease_id == lease.lease_id
    assert isinstance(c.on_scores(judged(lease.lease_id, [0.0, 0.0], judge="k")), EvalAnswers)


def test_every_training_prompt_is_trained_once_beside_eval_rounds():
    c, _ = with_evals(inflight=4, eval_lease_prompts=3)
    trained: list[int] = []
    answered = 0
    for turn in range(12):
        if turn % 4 == 0:
            c.evals.open(turn // 4, None)
        lease = c.on_lease_request(LeaseRequest("a", 1, 0))
        if isinstance(lease, Wait):
            continue
        c.on_rollout(eval_rollout(lease) if lease.evaluation else rollout_for(lease))
        task = c.next_score_task("j#1")
        out = c.on_scores(judged(task.lease_id, np.zeros(len(task.response_lengths))))
        if isinstance(out, EvalAnswers):
            answered += len(out.answers)
        else:
            trained += [p.prompt_id for p in out]
            c.consumed([p.prompt_id for p in out])
    assert answered == 3 * EVAL_PROMPTS and trained == list(range(len(trained))) and len(trained) == 2 * 9
