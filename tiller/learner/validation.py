"""What a worker's answer must satisfy before the learner trusts it: each check returns the reason
it fails (or None), so every refusal is counted under its own name and logged with its cause. A reason's
text before the first colon is fixed (it is the key it is counted under); details follow it.

The codec has already checked dtypes, ranks and finiteness of the arrays (messages.py annotates
them); these checks are about meaning: sizes that agree with the lease, token ids the model can
embed, log-probs that are log-probabilities. They never raise, whatever the arrays hold, because
they also run on messages built in-process (tests, fakes) that never met the codec.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tiller.protocol.messages import Rollout, Scores

# A behaviour log-prob is log p <= 0. vLLM computes it with a log-softmax, so it is exactly <= 0
# in float math; the tolerance only spares a rounding slip from throwing away a whole lease.
LOGPROB_TOLERANCE = 1e-3


def _flat(array: Any, kinds: str) -> bool:
    """A 1-D numpy array whose dtype kind is one of `kinds` ("iu": integers, "f": floats, "b": bools)."""
    return isinstance(array, np.ndarray) and array.ndim == 1 and array.dtype.kind in kinds


def _in_vocab(tokens: np.ndarray, vocab_size: int | None) -> bool:
    """Token ids the model can embed (an id past the table would crash the training step)."""
    return vocab_size is None or len(tokens) == 0 or (int(tokens.min()) >= 0 and int(tokens.max()) < vocab_size)


def rollout_problem(rollout: Rollout, samples: int, max_new_tokens: int, vocab_size: int | None) -> str | None:
    """Why `rollout` cannot be judged and trained on, or None: shapes that agree with each other and
    with the lease (`samples` = prompts x k), and finite log-probabilities."""
    lengths, tokens, logprobs = rollout.response_lengths, rollout.response_tokens, rollout.logprobs
    if not (_flat(tokens, "iu") and _flat(lengths, "iu")):
        return "response tokens and lengths must be 1-D integer arrays"
    if not (_flat(logprobs, "f") and _flat(rollout.truncated, "b")):
        return "logprobs must be a 1-D float array and truncated a 1-D bool array"
    if not len(lengths) == samples == len(rollout.truncated):
        return f"response count disagrees with the lease: {len(lengths)} for {samples} samples"
    if len(lengths) and (int(lengths.min()) < 0 or int(lengths.max()) > max_new_tokens):
        return f"response lengths out of range: allowed 0..{max_new_tokens}"
    if not int(lengths.astype(np.int64).sum()) == len(tokens) == len(logprobs):
        return "response lengths disagree with the token or logprob count"
    if not _in_vocab(tokens, vocab_size):
        return f"token ids outside the vocabulary: allowed 0..{vocab_size}"
    if not bool(np.isfinite(logprobs).all()):
        return "logprobs hold NaN or infinity"
    if len(logprobs) and float(logprobs.max()) > LOGPROB_TOLERANCE:
        return f"logprobs above 0, so not log-probabilities: max {float(logprobs.max()):.4g}"
    return None


def scores_problem(scores: Scores, n: int, k: int, max_new_tokens: int, vocab_size: int | None) -> str | None:
    """Why a judge's answer cannot be used, or None: every sample scored with a finite number (a NaN
    reward would poison the weights), pair columns of one length, revisions that fit."""
    lengths = scores.revision_lengths
    columns = (scores.pair_prompts, scores.chosen, scores.rejected, scores.revision_tokens, lengths)
    if not all(_flat(a, "iu") for a in columns):
        return "pair, revision and length columns must be 1-D integer arrays"
    if not (_flat(scores.scores, "f") and len(scores.scores) == n * k):
        return f"score count disagrees with the task: expected {n * k}"
    if not bool(np.isfinite(scores.scores).all()):
        return "scores hold NaN or infinity"
    m = len(scores.pair_prompts)
    if not (len(scores.chosen) == m == len(scores.rejected) and m <= n * k):
        return "pair columns of different lengths, or more pairs than samples"
    if len(lengths) != n * k or (len(lengths) and (int(lengths.min()) < -1 or int(lengths.max()) > max_new_tokens)):
        return f"revision lengths malformed: expected {n * k} values in -1..{max_new_tokens}"
    if int(lengths[lengths >= 0].astype(np.int64).sum()) != len(scores.revision_tokens):
        return "revision lengths disagree with the revision tokens"
    if not _in_vocab(scores.revision_tokens, vocab_size):
        return f"revision token ids outside the vocabulary: allowed 0..{vocab_size}"
    return None


def valid_pairs(scores: Scores, n: int, k: int) -> list[tuple[int, int, int]]:
    """(prompt, chosen, rejected) for each pair that names two different existing candidates."""
    revised = scores.revision_lengths > 0  # an empty revision is no candidate
    exists = lambda i, c: 0 <= c < k or (k <= c < 2 * k and bool(revised[i * k + c - k]))  # noqa: E731
    return [(int(i), int(c), int(r)) for i, c, r in zip(scores.pair_prompts, scores.chosen, scores.rejected)
            if 0 <= i < n and c != r and exists(i, c) and exists(i, r)]
