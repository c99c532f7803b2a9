"""A bounded in-memory cache of image embeddings for training with a frozen encoder.

With the image encoder frozen, a training patch's embedding never changes, so
it is computed once and reused in later epochs: those then cost only the
prompt encoder and mask decoder. Keys identify the patch completely (split,
image, crop corner, augmentation), which the sampler keeps fixed across epochs
for a frozen encoder (``PatchSampler(vary_per_epoch=False)``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence

import torch


class EmbeddingLRU:
    """Least-recently-used cache of (1, C, E, E)-shaped embeddings, ``capacity`` entries."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"capacity={capacity!r}; use 0 (no cache) or more entries")
        self.capacity = capacity
        self._entries: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def get_many(
        self,
        keys: Sequence[Hashable],
        inputs: Sequence,
        compute: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """Embeddings (B, C, E, E) of ``inputs`` (objects with ``.pixels`` (3, S, S)).

        Missing ones are computed together with ``compute(pixels (b, 3, S, S))``; the
        ``pixels`` of inputs whose key is cached are never read (they may be None).
        """
        missing = [i for i, key in enumerate(keys) if key not in self._entries]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        fresh = {}
        if missing:
            computed = compute(torch.stack([inputs[i].pixels for i in missing]))
            fresh = {keys[i]: computed[j : j + 1] for j, i in enumerate(missing)}
        result = [fresh[key] if key in fresh else self._entries[key] for key in keys]
        for key in keys:  # after reading: storing may evict entries this call still needed
            if key in fresh:
                self._store(key, fresh[key])
            elif key in self._entries:
                self._entries.move_to_end(key)
        return torch.cat(result)

    def _store(self, key: Hashable, embedding: torch.Tensor) -> None:
        if self.capacity == 0:
            return
        self._entries[key] = embedding.detach()
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
