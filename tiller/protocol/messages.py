"""Wire messages between the learner and its workers.

Each message is a frozen dataclass tagged with a `KIND` and a `SCHEMA` number. Field order is
wire order: add new fields only at the end, and bump `SCHEMA` when a field changes meaning. A field
appended as `optional(default)` needs no new schema: the codec leaves it off the body while it holds
its default and fills it in when a body ends before it, so an older peer still reads such messages.
Token data travels as flat arrays plus lengths (one frame each), never as Python lists:
converting lists costs ~4 ms per 256x512 batch (platform notes), raw frames ~0.1 ms.

Conversation (every worker talks only to the learner, over one DEALER socket):

    actor   LeaseRequest ->   <- Lease | Wait | Shutdown
    actor   Rollout      ->                       (then the next LeaseRequest)
    judge   WorkRequest  ->   <- ScoreTask | Shutdown   (parked until work exists)
    judge   Scores | JudgeFailed ->               (then the next WorkRequest)
    actor   ModelRequest ->   <- ModelCard           (once per learner, before its first weights)
    actor   WeightsRequest -> <- WeightsBucket | WeightsGone
    any     Heartbeat    ->   <- HeartbeatAck       (own socket, own thread, every heartbeat_s)
    tiller run  WorkerExited ->                       (a worker's process ended)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import numpy as np

from tiller.protocol.codec import Array, optional

# Array fields say what they may carry; the codec rejects anything else before looking at the bytes.
Ints = Annotated[np.ndarray, Array("int", ndim=1)]
Flags = Annotated[np.ndarray, Array("bool", ndim=1)]
Floats = Annotated[np.ndarray, Array("float", ndim=1)]  # finite and in range: the learner checks (validation.py)
Weights = Annotated[np.ndarray, Array()]  # any whitelisted dtype: a model may keep integer buffers


def unflatten(flat: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    """Split a flat token (or logprob) array into per-sequence views by their lengths."""
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return [flat[offsets[i]:offsets[i + 1]] for i in range(len(lengths))]


def _message(kind: str, schema: int = 1):
    def register(cls):
        cls = dataclass(frozen=True)(cls)
        cls.KIND, cls.SCHEMA = kind, schema
        REGISTRY[kind] = cls
        return cls

    return register


REGISTRY: dict[str, type] = {}


@_message("lease_request")
class LeaseRequest:
    """An actor asks for prompts; it reports the policy version its engine holds."""

    actor_id: str
    incarnation: int
    policy_version: int


@_message("lease")
class Lease:
    """A batch of prompts leased to one actor until `deadline_s` (seconds from issue)."""

    lease_id: int
    latest_version: int  # the actor fetches this version first if its engine is older
    prompt_ids: Ints  # int64 [n]: position of each prompt in the learner's stream
    prompt_tokens: Ints  # int32 [sum(prompt_lengths)]
    prompt_lengths: Ints  # int32 [n]
    samples_per_prompt: int
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int
    deadline_s: float
    learner_incarnation: int  # versions count within one learner start; a resumed learner has a new one
    # live evaluation (live_eval.py): greedy, one answer per prompt; the prompt ids index the eval set, not
    # the training stream. Left off the wire when False, so actors of an older release still read training leases
    evaluation: bool = optional(False)


@_message("wait")
class Wait:
    """No lease now (credits spent, or the policy lag bound); ask again after `retry_after_s`."""

    reason: str
    retry_after_s: float
    latest_version: int
    learner_incarnation: int


@_message("shutdown")
class Shutdown:
    reason: str


@_message("rollout", schema=2)
class Rollout:
    """k sampled responses per leased prompt, in prompt-major order (prompt i, sample j at i*k+j)."""

    actor_id: str
    incarnation: int
    lease_id: int
    seq: int  # per-incarnation counter, so redelivered work can be told apart
    policy_version: int  # weights the engine held while generating
    response_tokens: Ints  # int32 [sum(response_lengths)]
    response_lengths: Ints  # int32 [n*k]
    logprobs: Floats  # float32 [sum(response_lengths)]: behaviour logprob of each sampled token
    truncated: Flags  # bool [n*k]: hit max_new_tokens without an end-of-sequence token
    generate_seconds: float
    load_seconds: float = 0.0  # since the previous rollout: fetching and loading weights
    idle_seconds: float = 0.0  # since the previous rollout: asking for work and waiting for it


@_message("work_request")
class WorkRequest:
    """A judge is ready for one more batch to score."""

    judge_id: str
    incarnation: int
    judge_kind: str


@_message("score_task", schema=3)
class ScoreTask:
    lease_id: int
    samples_per_prompt: int
    prompt_tokens: Ints  # int32, flat
    prompt_lengths: Ints  # int32 [n]
    response_tokens: Ints  # int32, flat
    response_lengths: Ints  # int32 [n*k]
    truncated: Flags  # bool [n*k]
    max_new_tokens: int  # the learner's bound on a response; a judge's revisions must respect it too
    # [n] a chat prompt's messages as JSON ([{"role", "content"}, ...]), "" for a plain prompt: judges
    # read conversations from their messages, not from the policy's templated tokens
    conversations: list[str]
    # live evaluation: k is 1 (each prompt's greedy answer) or, once the run has a reference, 2 (the answer,
    # then the reference's answer to the same prompt, so a pairwise judge compares the two); scores only
    evaluation: bool = optional(False)


@_message("scores", schema=2)
class Scores:
    """A judged lease: one scalar score per sample, and any number of preference pairs.

    A pair names a prompt (index within the lease) and two of its candidates: candidates 0..k-1
    are the k samples, candidate k+j is the judge's revision of sample j (Constitutional AI).
    Rule, reward-model and LLM-pairwise judges give at most one pair per prompt (best, worst);
    a CAI judge gives one per sample its revision changed.
    """

    judge_id: str
    incarnation: int
    lease_id: int
    scores: Floats  # float32 [n*k]
    pair_prompts: Ints  # int32 [m]: prompt index of each pair
    chosen: Ints  # int32 [m]: candidate index, see above
    rejected: Ints  # int32 [m]
    revision_tokens: Ints  # int32 [sum of the non-negative revision_lengths]
    revision_lengths: Ints  # int32 [n*k]: -1 where sample j was not revised
    judge_seconds: float
    stats: dict[str, float]  # the judge's running counters (tasks, ties, timeouts, ...) for the learner's metrics


@_message("judge_failed")
class JudgeFailed:
    """A judge could not judge this task (its engine kept failing on it). The learner drops the
    rollout and leases the prompts again, so one bad task cannot take every judge down in turn."""

    judge_id: str
    incarnation: int
    lease_id: int
    reason: str


@_message("weights_request")
class WeightsRequest:
    version: int
    bucket: int
    learner_incarnation: int


@_message("weights_bucket", schema=2)
class WeightsBucket:
    """One bucket of a published policy version; an actor streams its tensors into the engine as it arrives.

    A tensor larger than a bucket travels in pieces, one bucket each, so no frame ever holds more than a
    bucket (a 7B model's float32 embedding alone is 2.2 GB, over a frame's limit). `pieces` is then parallel
    to `names`: `[offset, *shape]` for a piece (a 1-D slice starting at element `offset` of the flattened
    tensor of that `shape`), `[]` for a whole tensor; an empty `pieces` means every array is whole.
    """

    version: int
    bucket: int
    num_buckets: int
    names: list[str]
    tensors: list[Weights]  # bf16 arrives as a torch tensor, see codec
    learner_incarnation: int
    pieces: list[list[int]] = ()


@_message("weights_gone")
class WeightsGone:
    """The requested version was superseded before this peer began fetching it (or the learner restarted,
    or gave up on this peer part-way): fetch this one instead, from its first bucket."""

    latest_version: int
    learner_incarnation: int


@_message("model_request")
class ModelRequest:
    """An actor asks which model a learner trains, before it takes any of that learner's weights."""

    learner_incarnation: int


@_message("model_card")
class ModelCard:
    """What the learner's weights fit: an actor compares it with its own engine's model and refuses a
    mismatch, so that another model never loads into its engine part-way (vLLM keeps a layer's old weights
    when it is sent none: a learner with fewer layers of the same shapes would leave a silent hybrid).
    `names`, `shapes` and `dtypes` are parallel: every tensor the learner publishes, in order."""

    learner_incarnation: int
    architecture: str
    vocab_size: int
    eos_ids: list[int]
    max_positions: int
    names: list[str]
    shapes: list[list[int]]
    dtypes: list[str]


@_message("heartbeat", schema=2)
class Heartbeat:
    """A worker is alive (sent from its own thread, so a long generation does not look like death), and how
    long its current piece of work (a generation, a weight load, a judgement) has run: alive is not the same
    as making progress, and the learner takes back the work of a worker stuck past `learner.stuck_after_s`."""

    worker_id: str
    incarnation: int
    role: str  # "actor" or "judge"
    working_s: float = 0.0  # 0 while it holds no work


@_message("worker_exited")
class WorkerExited:
    """`tiller run` saw a worker's process end: its leases and judge tasks go to others now, not after its
    heartbeats are missed. Checked like any message under that worker's name (under CURVE, its key)."""

    worker_id: str
    exit_code: int


@_message("heartbeat_ack", schema=2)
class HeartbeatAck:
    latest_version: int
    learner_incarnation: int  # changes when the learner restarts: parked requests must be sent again
    training_finished: bool = False  # a worker waiting on a request that was never answered can leave
    stuck: bool = False  # the learner took this worker's work back (no progress): the worker exits to be restarted


@_message("status_request")
class StatusRequest:
    """`tiller status` asks a running learner how it is doing; anyone allowed to connect may ask."""

    asker: str


@_message("status")
class Status:
    """A running learner at a glance: its progress, and each actor's and judge's share of the work.
    Per-worker lists are parallel (the i-th entries describe one worker)."""

    learner_incarnation: int
    policy_version: int
    step: int
    steps: int
    samples_per_s: float  # the latest step's
    reward_mean: float  # the latest step's (0.0 before the first)
    inflight_prompts: int
    awaiting_judges: int
    actors: list[str]
    actor_versions: list[int]
    actor_leases: list[int]  # leases it is generating now
    actor_rollouts: list[int]  # rollouts accepted from it
    judges: list[str]
    judge_tasks: list[int]  # tasks it answered
    counters: dict[str, float]
