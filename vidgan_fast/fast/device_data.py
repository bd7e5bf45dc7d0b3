"""The training videos held on the GPU as uint8, with batches gathered there (the step never waits for the CPU).

At paper size the data set is 100,000 x 30 x 30 x 30 bytes = 2.7 GB. On-the-fly data is generated once and
kept quantised to uint8, exactly as `vidgan data` would write it.
"""
from __future__ import annotations

import numpy as np
import torch

from vidgan_fast.data import VideoSource

CHUNK = 2_000


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
    def fits(source: VideoSource, device: torch.device, headroom: float = 0.5) -> bool:
        """True when the uint8 data set takes at most `headroom` of the GPU's free memory."""
        need = len(source) * source.frames * source.size * source.size
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return need <= headroom * free

    def __len__(self) -> int:
        return self.n

    def _index(self, indices) -> torch.Tensor:
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return idx.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else idx

    def videos(self, indices) -> torch.Tensor:
        return self.data[self._index(indices)].float().div_(255)

    def frames_at(self, indices, times) -> torch.Tensor:
        return self.data[self._index(indices), self._index(times)].float().div_(255)
