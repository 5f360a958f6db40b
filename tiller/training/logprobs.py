"""Log-probabilities of the taken tokens (and the entropy) without a float32 full-vocabulary tensor.

    logp, entropy = taken_logprobs(logits, input_ids, mask, temperature=0.7, with_entropy=True)

The plain way, `log_softmax(logits.float()).gather(...)`, keeps a float32 [N, T, V] tensor alive
for the backward pass: with a 150k vocabulary and 16 x 512 tokens that is 5 GB, twice what the
bf16 logits themselves take. Here the forward pass works through the selected positions in
chunks of about `chunk_bytes` and keeps only the log-sum-exp per position; the backward pass
recomputes each chunk's softmax and writes the gradient straight into a tensor shaped like the
logits, in their dtype. Only positions where `mask` is 1 are computed (prompt and padding
positions cost nothing); the others come back as 0 with no gradient.

Index j of the [N, T-1] results is about token j+1, predicted from position j (as in learner/pg.py).
"""

from __future__ import annotations

import torch

DEFAULT_CHUNK_BYTES = 256 << 20  # float32 working memory per chunk


class _TakenTokenLogprobs(torch.autograd.Function):
    """Inputs are flat: logits [P, V] of the selected positions' rows (a view, never copied whole),
    rows [S] selected row indices, targets [S] the next token of each."""

    @staticmethod
    def forward(ctx, logits, rows, targets, temperature: float, chunk: int, with_entropy: bool):
        logp = torch.empty(rows.shape, dtype=torch.float32, device=logits.device)
        entropy = torch.empty_like(logp) if with_entropy else logp.new_empty(0)
        lse = torch.empty_like(logp)
        for start in range(0, rows.numel(), chunk):
            part = slice(start, start + chunk)
            z = logits.index_select(0, rows[part]).float() / temperature
            lse[part] = torch.logsumexp(z, dim=-1)
            logp[part] = z.gather(-1, targets[part].unsqueeze(-1)).squeeze(-1) - lse[part]
            if with_entropy:  # H = lse - sum_i p_i z_i
                p = torch.exp(z - lse[part].unsqueeze(-1))
                entropy[part] = lse[part] - (p * z).sum(-1)
        ctx.save_for_backward(logits, rows, targets, lse, entropy)
        ctx.temperature, ctx.chunk, ctx.with_entropy = temperature, chunk, with_entropy
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        logits, rows, targets, lse, entropy = ctx.saved_tensors
        t = ctx.temperature
        grad_logits = torch.zeros_like(logits)
        for start in range(0, rows.numel(), ctx.chunk):
            part = slice(start, start + ctx.chunk)
            z = logits.index_select(0, rows[part]).float() / t
            logp_all = z - lse[part].unsqueeze(-1)
            p = logp_all.exp()
            g_lp = grad_logp[part].unsqueeze(-1)
            # d logp_target / dz = onehot(target) - p
            grad = -p * g_lp
            grad.scatter_add_(-1, targets[part].unsqueeze(-1), g_lp)
            if ctx.with_entropy and grad_entropy is not None and grad_entropy.numel():
                # dH / dz_i = -p_i (log p_i + H)
                grad -= p * (logp_all + entropy[part].unsqueeze(-1)) * grad_entropy[part].unsqueeze(-1)
            grad_logits.index_copy_(0, rows[part], (grad / t).to(logits.dtype))
        return grad_logits, None, None, None, None, None


def taken_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor | None = None,
                   temperature: float = 1.0, with_entropy: bool = False,
                   chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> tuple[torch.Tensor, torch.Tensor | None]:
    """logits [N, T, V] of a causal LM over input_ids [N, T]; mask [N, T-1] selects the positions
    to compute (None: all). Returns (log-prob [N, T-1] of each next token under
    softmax(logits / temperature), its entropy [N, T-1] or None), float32, zero where mask is 0."""
    n, t, v = logits.shape
    if mask is None:
        mask = torch.ones((n, t - 1), dtype=torch.bool, device=logits.device)
    # row r = i * T + j of the flat logits predicts input_ids[i, j + 1]
    flat = logits.reshape(n * t, v)  # a view: the logits of a forward pass are contiguous
    i, j = mask.bool().nonzero(as_tuple=True)
    rows = i * t + j
    targets = input_ids[i, j + 1]
    chunk = max(1, chunk_bytes // (4 * v))
    logp_sel, entropy_sel = _TakenTokenLogprobs.apply(flat, rows, targets, float(temperature), chunk, with_entropy)
    logp = logits.new_zeros((n, t - 1), dtype=torch.float32).index_put((i, j), logp_sel)
    entropy = logits.new_zeros((n, t - 1), dtype=torch.float32).index_put((i, j), entropy_sel) if with_entropy else None
    return logp, entropy
