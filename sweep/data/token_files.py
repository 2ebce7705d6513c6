"""Flat numpy token files as a training stream, OLMo's layout.

Each token file is a raw array of `data.dtype` ids (no `.npy` header despite the name: OLMo reads them with
`np.memmap`), cut into whole instances of `data.sequence_len` tokens. As OLMo's `MemMapDataset` does
(`olmo/data/memmap_dataset.py`: a file holds `file_size // (itemsize * chunk_size)` instances), the tokens after a
file's last whole instance are ignored. Instances are numbered across the files in their listed order: file 0's
first, then file 1's, ...

An optional order file (OLMo's `global_indices.npy`, a raw uint32 memmap) says which instance each stream position
is: position p is instance order[p]; without one, position p is instance p. OLMo writes one epoch's permutation of
every instance, padded at its end with repeats of its first entries up to a multiple of the data-parallel world
size (`drop_last: false`), so entries must lie in [0, instances) and the positions below the instance count must
not repeat; the padding may. Only the order file's slice of the chunk being read is ever fetched (OLMo's is
hundreds of MB), so a repeat is found in the chunks read, and named with both positions.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from sweep.data.token_stream import SCAN_BATCH_BYTES, ItemBatch, StreamError, StreamSource, TokenStream, batches_of


class TokenFilesStream(TokenStream):
    """Numpy token files (`source.files`: the token files in stream order, then the order file if `source.order`)."""

    def __init__(self, source: StreamSource):
        super().__init__(source)
        self.dtype = np.dtype(source.dtype).newbyteorder("<")
        self.instance_bytes = self.dtype.itemsize * source.sequence_len
        self.order_file = source.files[-1] if source.order is not None else None
        self.token_files = source.files[:-1] if source.order is not None else source.files
        per_file = np.array([file.size // self.instance_bytes for file in self.token_files], dtype=np.int64)
        self.instance_ends = np.cumsum(per_file)  # instance j is in file searchsorted(ends, j, "right")
        self.instances = int(self.instance_ends[-1]) if len(per_file) else 0
        if self.order_file is not None:
            self.order_dtype = np.dtype(source.order_dtype).newbyteorder("<")
            if self.order_file.size % self.order_dtype.itemsize:
                raise StreamError(f"{source.label_of(self.order_file)}: {self.order_file.size} bytes is no whole "
                                  f"number of {self.order_dtype.name} entries (data.order_dtype)")

    @property
    def length(self) -> int:
        if self.order_file is None:
            return self.instances
        return self.order_file.size // self.order_dtype.itemsize

    def instances_at(self, positions: np.ndarray, within: tuple[int, int] | None = None) -> np.ndarray:
        """int64: the instance at each stream position, reading the order file's slice `within` (default: the
        positions' span); StreamError for an entry out of range or repeated below the instance count."""
        positions = np.asarray(positions, dtype=np.int64)
        self.check_positions(positions)
        if self.order_file is None or not len(positions):
            return positions.copy()
        start, stop = within or (int(positions.min()), int(positions.max()) + 1)
        size = self.order_dtype.itemsize
        (raw,) = self.read(self.order_file, [(start * size, (stop - start) * size)])
        order = np.frombuffer(raw, dtype=self.order_dtype).astype(np.int64)
        label = self.source.label_of(self.order_file)
        bad = np.flatnonzero((order < 0) | (order >= self.instances))
        if len(bad):
            raise StreamError(f"{label}: position {start + int(bad[0]):,} names instance {int(order[bad[0]]):,}, but "
                              f"the token files hold {self.instances:,} instances (of data.sequence_len "
                              f"{self.source.sequence_len} tokens)")
        epoch = order[: max(0, min(stop, self.instances) - start)]  # positions below the instance count
        values, first, counts = np.unique(epoch, return_index=True, return_counts=True)
        if (counts > 1).any():
            instance = values[np.argmax(counts > 1)]
            where = np.flatnonzero(epoch == instance)[:2] + start
            raise StreamError(f"{label}: instance {int(instance):,} is at positions {int(where[0]):,} and "
                              f"{int(where[1]):,} (an order lists each instance once)")
        return order[positions - start]

    def _read_tokens(self, instances: np.ndarray, tokens_each: int) -> list[bytes]:
        """The first `tokens_each` tokens of each instance, as bytes, in `instances`' order."""
        file = np.searchsorted(self.instance_ends, instances, side="right")
        first_in_file = np.concatenate([[0], self.instance_ends[:-1]])[file]
        offsets = (instances - first_in_file) * self.instance_bytes
        out: list[bytes] = [b""] * len(instances)
        for f in np.unique(file):
            mine = np.flatnonzero(file == f)
            ranges = [(int(offset), tokens_each * self.dtype.itemsize) for offset in offsets[mine]]
            for slot, body in zip(mine, self.read(self.token_files[int(f)], ranges)):
                out[slot] = body
        return out

    def read_items(self, positions: np.ndarray, width: int, within: tuple[int, int] | None = None) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        if width > self.source.sequence_len:
            raise StreamError(f"{self.label}: instances hold data.sequence_len = {self.source.sequence_len} tokens, "
                              f"fewer than the {width} asked (k + l)")
        instances = self.instances_at(positions, within)
        if not len(instances):
            return np.zeros((0, width), dtype=np.int64)
        tokens = np.frombuffer(b"".join(self._read_tokens(instances, width)), dtype=self.dtype)
        return tokens.reshape(len(positions), width).astype(np.int64)

    def iter_items(self, start: int, stop: int, batch_bytes: int = SCAN_BATCH_BYTES) -> Iterator[ItemBatch]:
        positions = np.arange(start, stop, dtype=np.int64)
        instances = self.instances_at(positions)
        order = np.argsort(instances, kind="stable")  # storage order: runs of neighbouring instances coalesce
        length = self.source.sequence_len
        for chosen in batches_of(order, np.full(len(order), self.instance_bytes), batch_bytes):
            tokens = np.frombuffer(b"".join(self._read_tokens(instances[chosen], length)), dtype=self.dtype)
            yield ItemBatch(tokens, np.arange(len(chosen) + 1, dtype=np.int64) * length, positions[chosen])
