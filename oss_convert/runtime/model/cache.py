"""The KV cache: every layer's keys and values, grown in place as tokens are added."""

from __future__ import annotations

import torch

KV_BLOCK = 256  # positions a cache without a reserved capacity grows by


class KVCache:
    """Every layer's keys and values ([positions, kv heads, head_dim], float32) in buffers that
    hold `capacity` positions from the first call on (generate knows its context: the prompt
    and the tokens it may add), so that a decode step writes one row instead of copying the
    whole cache; a cache that runs out grows to whole blocks of KV_BLOCK positions."""

    def __init__(self, capacity: int = 0):
        self.capacity = capacity
        self._buffers: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer: keys, values
        self._lengths: list[int] = []

    @property
    def length(self) -> int:
        return self._lengths[0] if self._lengths else 0

    @property
    def keys(self) -> list[torch.Tensor]:
        return [keys[:n] for (keys, _), n in zip(self._buffers, self._lengths)]

    @property
    def values(self) -> list[torch.Tensor]:
        return [values[:n] for (_, values), n in zip(self._buffers, self._lengths)]

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Appends k and v [T, kv heads, head_dim] to `layer`'s (layers in order, from 0);
        returns all its keys and values so far."""
        keys, values, held = self.room(layer, k.shape[0], k.shape[1:], k.dtype, k.device)
        needed = held + k.shape[0]
        keys[held:needed], values[held:needed] = k, v
        self.filled(layer, needed)
        return keys[:needed], values[:needed]

    def room(self, layer: int, count: int, row_shape: tuple[int, ...], dtype: torch.dtype,
             device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
        """`layer`'s key and value buffers with room for `count` more positions (rows of
        `row_shape`: kv heads, head_dim), and the positions they hold."""
        held = self._lengths[layer] if layer < len(self._lengths) else 0
        needed = held + count
        if layer == len(self._buffers):
            self._buffers.append(self._reserve(needed, row_shape, dtype, device))
            self._lengths.append(0)
        elif needed > self._buffers[layer][0].shape[0]:
            grown = self._reserve(needed, row_shape, dtype, device)
            for new, old in zip(grown, self._buffers[layer]):
                new[:held] = old[:held]
            self._buffers[layer] = grown
        return *self._buffers[layer], held

    def filled(self, layer: int, length: int) -> None:
        """`layer`'s buffers now hold `length` positions."""
        self._lengths[layer] = length

    def _reserve(self, needed: int, row_shape: tuple[int, ...], dtype: torch.dtype,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.capacity if needed <= self.capacity else -(-needed // KV_BLOCK) * KV_BLOCK
        keys, values = (torch.empty((size, *row_shape), dtype=dtype, device=device) for _ in range(2))
        return keys, values
