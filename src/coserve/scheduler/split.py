"""Batch splitting: how many tasks of the head group run as one batch."""

from __future__ import annotations


def split_batch(group_len: int, max_batch: int, free_activation_bytes: int, item_bytes: int) -> int:
    """min(batch that fits in free activation memory, profiled max batch), at least one:
    a single item always runs (its activations were budgeted when the plan was made)."""
    fit = free_activation_bytes // item_bytes if item_bytes > 0 else group_len
    return max(1, min(group_len, max_batch, fit))
