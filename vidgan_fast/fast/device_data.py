"""The training videos held on the GPU as uint8, with batches gathered there (the step never waits for the CPU).

At paper size the data set is 100,000 x 30 x 30 x 30 bytes = 2.7 GB. On-the-fly data is generated once and
kept quantised to uint8, exactly as `vidgan data` would write it. It goes to the GPU only when it fits in the
memory left once the training state and its CUDA graphs exist, with MARGIN to spare (execution.plan places it
after capture); otherwise batches come from the host (a few KB per step).
"""
from __future__ import annotations

import numpy as np
import torch

from vidgan_fast.data import VideoSource

CHUNK = 2_000
MARGIN = 512 * 2 ** 20        # bytes left free beside the data set (the allocator's rounding, the next batches)


def on_gpu_if_it_fits(source, device):
    """`source` on the GPU (DeviceVideoSource) when it fits in what is free now, else `source` itself."""
    from vidgan_fast.profiling import nvtx_range
    if not DeviceVideoSource.fits(source, device):
        return source
    with nvtx_range("data to the GPU", "data"):
        return DeviceVideoSource(source, device)


class DeviceVideoSource:
    """The same interface as data.VideoSource (videos / frames_at -> float32 in [0, 1]), on `device`."""

    def __init__(self, source: VideoSource, device: torch.device):
        n = len(source)
        self.n, self.frames, self.size, self.device = n, source.frames, source.size, torch.device(device)
        self.data = torch.empty(n, source.frames, source.size, source.size, dtype=torch.uint8, device=device)
        for start in range(0, n, CHUNK):
            stop = min(start + CHUNK, n)
            if isinstance(source.data, np.ndarray):
                chunk = torch.from_numpy(np.ascontiguousarray(source.data[start:stop]))
            else:
                chunk = source.videos(np.arange(start, stop)).mul_(255).round_().to(torch.uint8)
            self.data[start:stop].copy_(chunk)

    @staticmethod
    def fits(source: VideoSource, device: torch.device) -> bool:
        """True when the uint8 data set and MARGIN fit in the GPU's free memory (the caching allocator's free cached
        blocks count as free)."""
        device = torch.device(device)
        need = len(source) * source.frames * source.size * source.size
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return need + MARGIN <= free + cached

    def __len__(self) -> int:
        return self.n

    def _index(self, indices) -> torch.Tensor:
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return idx.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else idx

    def videos(self, indices) -> torch.Tensor:
        return self.data[self._index(indices)].float().div_(255)

    def frames_at(self, indices, times) -> torch.Tensor:
        return self.data[self._index(indices), self._index(times)].float().div_(255)
