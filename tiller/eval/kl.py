"""KL divergence of a model from a reference, on the model's own samples.

    KL(pi || ref) = E_{y ~ pi}[ log pi(y|x) - log ref(y|x) ]

estimated by the mean over sampled responses of the summed per-token log-ratio (unbiased per response;
the per-token figure divides by the tokens). Both models score the same token ids in float32 through
transformers, so the estimate carries no vLLM-versus-training numerics; the two models must share a
tokenizer (a model and its own earlier checkpoint do).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tiller.training.engine import load_frozen
from tiller.training.logprobs import taken_logprobs


@dataclass(frozen=True)
class KLEstimate:
    per_response: float  # mean over responses of sum over tokens
    per_token: float  # the same total divided by all response tokens
    responses: int
    tokens: int
    log_ratios: list[float]  # each response's summed log-ratio

    def as_dict(self) -> dict:
        return {"per_response": self.per_response, "per_token": self.per_token, "responses": self.responses,
                "tokens": self.tokens}


def sequence_logprobs(model, prompts: list[np.ndarray], responses: list[np.ndarray], batch_size: int = 8,
                      pad_id: int = 0) -> list[np.ndarray]:
    """Per-token log-probs of each response given its prompt, float32 arrays."""
    out = []
    for lo in range(0, len(prompts), batch_size):
        rows = [np.concatenate([p, r]).astype(np.int64) for p, r in zip(prompts[lo:lo + batch_size],
                                                                        responses[lo:lo + batch_size])]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width - 1), dtype=torch.bool)
        for i, (row, prompt) in enumerate(zip(rows, prompts[lo:lo + batch_size])):
            ids[i, :len(row)] = torch.from_numpy(row)
            attention[i, :len(row)] = 1
            mask[i, len(prompt) - 1:len(row) - 1] = True  # positions predicting the response tokens
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=attention).logits
            logp, _ = taken_logprobs(logits, ids, mask)
        for i, prompt in enumerate(prompts[lo:lo + batch_size]):
            n = len(rows[i]) - len(prompt)
            out.append(logp[i, len(prompt) - 1:len(prompt) - 1 + n].numpy().copy())
    return out


def kl_to_reference(model_dir: str | Path, reference_dir: str | Path, prompts: list[np.ndarray],
                    responses: list[np.ndarray]) -> KLEstimate:
    """KL(model || reference) over `responses`, which the model sampled (at temperature 1) for `prompts`."""
    keep = [i for i, r in enumerate(responses) if len(r)]
    prompts, responses = [prompts[i] for i in keep], [responses[i] for i in keep]
    ratios = np.zeros(len(responses))
    for path, sign in ((model_dir, 1.0), (reference_dir, -1.0)):
        model = load_frozen(path, torch.float32, "cpu")
        pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
        ratios += sign * np.array([lp.sum() for lp in sequence_logprobs(model, prompts, responses, pad_id=pad)])
        del model
    tokens = int(sum(len(r) for r in responses))
    per_response = float(ratios.mean()) if len(ratios) else float("nan")
    return KLEstimate(per_response, float(ratios.sum() / tokens) if tokens else float("nan"), len(ratios), tokens,
                      [float(r) for r in ratios])
