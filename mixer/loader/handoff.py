"""How a DataLoader worker hands a packed batch to the main process: one reused shared buffer, the rest as bytes.

torch sends every tensor of a batch through shared memory of its own: fresh pages, which the worker first faults in
as it writes them, and a file descriptor that the main process fetches over a new, authenticated socket connection
to the worker. Where page faults are dear (virtual machines), faulting in a fresh buffer for a batch's pixels costs
the worker about as much as decoding the JPEGs, and the connections per batch cost the main process more than the
tensors' bytes. So:

- pixels go into a `PixelPool` buffer that the worker reuses once the main process has copied them out (it says so
  by writing the buffer's first byte); a buffer still in flight is never written, whatever the DataLoader prefetches;
- every other tensor of the batch is small and travels as plain bytes inside the same message (`Outbound`).

The main process copies the pixels out (cheap next to the page faults it saves) and keeps the pool buffers it has
seen mapped (`MAPPED`), so receiving one again costs no new mapping; up to `MAX_MAPPED` buffers stay mapped after a
loader's workers are gone, until newer ones push them out.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from mixer.batch import PackedBatch

HEADER = 64  # bytes in front of the pixels in a pool buffer; byte 0 is 1 once the main process has copied them
MAPPED: OrderedDict[int, torch.UntypedStorage] = OrderedDict()  # main process: pool buffers received, by address
MAX_MAPPED = 16


class PixelPool:
    """A worker's shared pixel buffers, each reused once the main process has copied its batch out."""

    def __init__(self, max_buffers: int = 16) -> None:
        self.max_buffers = max_buffers
        self.buffers: list[torch.UntypedStorage] = []

    def take(self, n: int, size: int) -> torch.Tensor:
        """A uint8 `[n, 3, size, size]` tensor in shared memory that no batch in flight uses (contents undefined)."""
        need = HEADER + n * 3 * size * size
        free = [s for s in self.buffers if s[0] == 1]
        fits = [s for s in free if s.nbytes() >= need]
        if fits:
            buf = min(fits, key=lambda s: s.nbytes())
        else:
            buf = torch.UntypedStorage._new_shared(need + need // 4)  # room for a few more images next time
            if len(self.buffers) >= self.max_buffers and free:
                self.buffers.remove(min(free, key=lambda s: s.nbytes()))
            if len(self.buffers) < self.max_buffers:
                self.buffers.append(buf)
        buf[0] = 0
        return torch.empty(0, dtype=torch.uint8).set_(buf, HEADER, (n, 3, size, size))


class Outbound:
    """A `PackedBatch` leaving a worker; unpickled in the main process as the `PackedBatch` itself.

    `pixel_values` must be a `PixelPool` tensor (or empty); the main process copies it out and frees its buffer.
    """

    def __init__(self, batch: PackedBatch) -> None:
        self.batch = batch

    def __reduce__(self) -> tuple:
        arrays = {k: v if k == "pixel_values" else v.numpy() for k, v in self.batch.items()}
        return (_inbound, (arrays,))


def _inbound(arrays: dict) -> PackedBatch:
    pixels = arrays["pixel_values"]
    if pixels.numel():
        buf = pixels.untyped_storage()
        # numpy's memcpy, not torch's copy: torch would split it over intra-op threads, and with the workers busy
        # on every core those threads spin at a barrier for longer than the copy takes.
        arrays["pixel_values"] = torch.from_numpy(pixels.numpy().copy())
        buf[0] = 1  # copied: the worker may reuse the buffer
        MAPPED[buf.data_ptr()] = buf
        MAPPED.move_to_end(buf.data_ptr())
        while len(MAPPED) > MAX_MAPPED:
            MAPPED.popitem(last=False)
    return PackedBatch(**{k: torch.from_numpy(v) if not isinstance(v, torch.Tensor) else v for k, v in arrays.items()})
