"""Micro-batches: a step's rows cut into pieces of at most `micro_batch_size` sequences (a stage's setting).

    for rows in row_chunks(torch.arange(n), size):   # index tensors, in order, covering every row once
        ids, attn, mask = trimmed(ids_all[rows], attn_all[rows], mask_all[rows])

Each piece is trimmed to its own longest sequence (batches are right-padded to the longest of
the whole step), so a micro-batch of short responses costs what short responses cost.
"""

from __future__ import annotations

import torch


def row_chunks(rows: torch.Tensor, size: int) -> list[torch.Tensor]:
    """`rows` in order, cut into pieces of at most `size` (0: one piece)."""
    if size <= 0 or size >= len(rows):
        return [rows]
    return list(torch.split(rows, size))


def trimmed(input_ids: torch.Tensor, attention_mask: torch.Tensor, *token_tensors: torch.Tensor):
    """Drop the columns past the longest sequence; `token_tensors` are [n, T-1] (about the next token)."""
    width = max(int(attention_mask.sum(-1).max()), 2)
    return (input_ids[:, :width], attention_mask[:, :width], *(t[:, :width - 1] for t in token_tensors))
