"""The running batch's KV cache: a transformers DynamicCache whose rows join and leave.

Rows are left-padded to a common length: each row's real tokens are its last columns, the padding
is masked out by the 2-D attention mask, never read, and holds zeros. Joining requests come as the
cache of one prefill of k left-padded rows (prefill.py; k = 1 for a request prefilled alone): its
rows that go on are selected, its padded columns zeroed, and it is padded on the left to the
batch's length, or the batch's to its, and concatenated along the batch dimension; leaving rows are
dropped with an index select. Leading columns that are padding in every row are trimmed, so the
first column is a real token of some row.
Only plain `DynamicLayer`s are handled (their public `keys`/`values`, (batch, heads, seq, head_dim)),
the same in transformers 5.17 and 5.25; anything else (sliding-window, quantized) is refused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from dora_core.serving.errors import UnsupportedModelError


def new_cache(config) -> DynamicCache:
    """An empty cache for one prefill; UnsupportedModelError unless all its layers are plain dynamic ones."""
    cache = DynamicCache(config=config)
    check_plain(cache)
    return cache


def check_plain(cache: DynamicCache) -> None:
    kinds = {type(layer).__name__ for layer in cache.layers if type(layer) is not DynamicLayer}
    if kinds:
        raise UnsupportedModelError(f"this model's KV cache has {sorted(kinds)} layers; the serving engine "
                                    "handles plain DynamicLayer caches only (no sliding-window or hybrid attention)")


class BatchCache:
    """KV cache + attention mask (batch, seq) of the running rows, in row order."""

    def __init__(self) -> None:
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # (batch, seq) int64, 0 = padding

    @property
    def rows(self) -> int:
        return 0 if self.mask is None else self.mask.shape[0]

    def add(self, cache: DynamicCache, length: int) -> None:
        """Append a prefilled batch-1 cache of `length` tokens as the last row."""
        self.add_rows(cache, [length])

    def add_rows(self, cache: DynamicCache, lengths: list[int], keep: list[int] | None = None) -> None:
        """Append the rows of a prefilled batch-k cache, left-padded: row i's real tokens are its last
        lengths[i] columns. `keep`: only these of its rows, in this order (the others finished at their
        first token); the cache is taken over, not copied."""
        check_plain(cache)
        device = cache.layers[0].keys.device
        width = cache.layers[0].keys.shape[2]
        if len(lengths) != cache.layers[0].keys.shape[0] or not all(0 < n <= width for n in lengths):
            raise ValueError(f"lengths {lengths} do not fit a cache of {cache.layers[0].keys.shape[0]} rows and "
                             f"{width} columns")
        mask = left_padding_mask(lengths, width, device)  # (k, width)
        if keep is not None:
            if not keep:
                return
            index = torch.tensor(keep, device=device)
            first = width - max(lengths[i] for i in keep)  # leading columns that are padding in every kept row
            mask = mask[index, first:]
            for layer in cache.layers:
                layer.keys = layer.keys[index, :, first:]
                layer.values = layer.values[index, :, first:]
        if not bool(mask.all()):
            # zeros, as _pad_left's: the padding holds what the model computed for pad tokens, never read, but a
            # NaN or inf there (whatever a kernel makes of an all-padding query row) would still poison a decode
            # step, whose masked weights are 0 and 0 x NaN = NaN
            real_columns = mask.bool()[:, None, :, None]  # (k, 1, width, 1)
            for layer in cache.layers:
                layer.keys = torch.where(real_columns, layer.keys, 0.0)
                layer.values = torch.where(real_columns, layer.values, 0.0)
        if self.cache is None:
            self.cache, self.mask = cache, mask
            return
        width = max(self.mask.shape[1], mask.shape[1])
        for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([_pad_left(mine.keys, width), _pad_left(theirs.keys, width)], dim=0)
            mine.values = torch.cat([_pad_left(mine.values, width), _pad_left(theirs.values, width)], dim=0)
        self.mask = torch.cat([_pad_mask_left(self.mask, width), _pad_mask_left(mask, width)])

    def extend_mask(self) -> torch.Tensor:
        """The mask for a decode step (one more real column per row); the step's forward extends the cache."""
        self.mask = F.pad(self.mask, (0, 1), value=1)
        return self.mask

    def next_positions(self) -> torch.Tensor:
        """(batch, 1): each row's next position, its count of real tokens (as generate does for left padding)."""
        return self.mask.sum(dim=1, keepdim=True)

    def keep(self, indices: list[int]) -> None:
        """Keep only these rows (in this order), then trim columns that are padding in every row."""
        if not indices:
            self.cache = self.mask = None
            return
        index = torch.tensor(indices, device=self.mask.device)
        self.mask = self.mask[index]
        first = int(self.mask.any(dim=0).nonzero()[0])
        self.mask = self.mask[:, first:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, first:]
            layer.values = layer.values[index, :, first:]


def left_padding_mask(lengths: list[int], width: int, device: torch.device | str) -> torch.Tensor:
    """(rows, width) int64: 1 on each row's last lengths[i] columns, 0 on the padding before them."""
    real = torch.tensor(lengths, device=device)  # (rows,)
    return (torch.arange(width, device=device) >= width - real[:, None]).long()


def _pad_mask_left(mask: torch.Tensor, width: int) -> torch.Tensor:  # (b, seq) -> (b, width)
    return F.pad(mask, (width - mask.shape[1], 0))


def _pad_left(tensor: torch.Tensor, width: int) -> torch.Tensor:  # (b, heads, seq, dim) -> (b, heads, width, dim)
    return F.pad(tensor, (0, 0, width - tensor.shape[2], 0))
