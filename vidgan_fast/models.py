"""Reference models (plain PyTorch): the spec every fast op is checked against.

Layer by layer as in the paper (the README's first paragraph sums them up). Widths are constructor arguments
with the paper's values as defaults, so tests and the `tiny` preset build small versions of the same architecture.
Frames are [B, 1, 30, 30], videos [B, 1, T, 30, 30] (Conv3d layout), codes [B, 100], values in [-1, 1].
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

FRAME_SIZE = 30
PROJ_KERNEL = 8
FRAME_PROJ = dict(stride=2, padding=3)   # 30x30 -> 15x15
VIDEO_PROJ = dict(stride=3, padding=2)   # 30x30 -> 9x9 per frame


def projection_filter(seed: int, size: int = PROJ_KERNEL) -> torch.Tensor:
    """The fixed random projection of discriminator `seed`: a Gaussian 1->1 filter of unit L2 norm."""
    g = torch.Generator().manual_seed(int(seed))
    w = torch.randn(1, 1, size, size, generator=g, dtype=torch.float64)
    return (w / w.norm()).float()


def init_weights(module: nn.Module) -> None:
    """DCGAN init: N(0, 0.02) weights, zero biases; batch-norm scales N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, nn.Conv3d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class FrameGenerator(nn.Module):
    """G_F: code [B, z_dim] -> frame [B, 1, 30, 30] in [-1, 1] (DCGAN-like)."""

    def __init__(self, z_dim: int = 100, widths: tuple[int, int, int, int] = (1024, 1024, 512, 256)):
        super().__init__()
        self.z_dim, self.widths = z_dim, tuple(widths)
        c0, c1, c2, c3 = self.widths
        self.fc = nn.Linear(z_dim, c0 * 4)
        self.fc_bn = nn.BatchNorm1d(c0 * 4)
        self.up1 = nn.ConvTranspose2d(c0, c1, 4, 2, 1)   # 2 -> 4
        self.bn1 = nn.BatchNorm2d(c1)
        self.up2 = nn.ConvTranspose2d(c1, c2, 4, 2, 1)   # 4 -> 8
        self.bn2 = nn.BatchNorm2d(c2)
        self.up3 = nn.ConvTranspose2d(c2, c3, 4, 2, 1)   # 8 -> 16
        self.bn3 = nn.BatchNorm2d(c3)
        self.out = nn.ConvTranspose2d(c3, 1, 4, 2, 2)    # 16 -> 30
        init_weights(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc_bn(self.fc(z))).view(z.shape[0], self.widths[0], 2, 2)
        h = F.relu(self.bn1(self.up1(h)))
        h = F.relu(self.bn2(self.up2(h)))
        h = F.relu(self.bn3(self.up3(h)))
        return torch.tanh(self.out(h))


class FrameDiscriminator(nn.Module):
    """D_F: frame [B, 1, 30, 30] -> logit [B], behind its own fixed projection (a buffer)."""

    def __init__(self, seed: int = 0, widths: tuple[int, int, int] = (256, 512, 1024)):
        super().__init__()
        self.seed, self.widths = int(seed), tuple(widths)
        c1, c2, c3 = self.widths
        self.register_buffer("projection", projection_filter(seed))
        self.conv1 = nn.Conv2d(1, c1, 4, 2, 2)    # 15 -> 8
        self.conv2 = nn.Conv2d(c1, c2, 4, 2, 1)   # 8 -> 4
        self.conv3 = nn.Conv2d(c2, c3, 4, 2, 1)   # 4 -> 2
        self.conv4 = nn.Conv2d(c3, 1, 4, 1, 1)    # 2 -> 1
        init_weights(self)

    def project(self, frames: torch.Tensor) -> torch.Tensor:
        return F.conv2d(frames, self.projection, **FRAME_PROJ)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        h = self.project(frames)
        h = F.leaky_relu(self.conv1(h), 0.2)
        h = F.leaky_relu(self.conv2(h), 0.2)
        h = F.leaky_relu(self.conv3(h), 0.2)
        return self.conv4(h).flatten(1).squeeze(1)


class VideoGenerator(nn.Module):
    """G_V: z_v [B, z_dim] -> codes [B, T, code_dim] -> (frozen G_F) -> video [B, 1, T, 30, 30]."""

    def __init__(self, z_dim: int = 100, hidden: tuple[int, ...] = (512, 1024, 2048), steps: int = 30,
                 step_dim: int = 128, lstm_hidden: int = 256, code_dim: int = 100):
        super().__init__()
        self.z_dim, self.steps, self.step_dim, self.code_dim = z_dim, steps, step_dim, code_dim
        dims = [z_dim, *hidden, steps * step_dim]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b, bias=False), nn.BatchNorm1d(b), nn.ReLU()]
        self.dense = nn.Sequential(*layers)
        self.lstm = nn.LSTM(step_dim, lstm_hidden, num_layers=2, bidirectional=True)
        self.to_code = nn.Linear(2 * lstm_hidden, code_dim)
        init_weights(self)

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """Latent codes [B, T, code_dim] in (-1, 1). Sample b depends only on z[b] when BN is in eval mode."""
        B = z.shape[0]
        h = self.dense(z).view(B, self.steps, self.step_dim).transpose(0, 1)   # [T, B, step_dim]
        h, _ = self.lstm(h)                                                       # [T, B, 2H]
        return torch.tanh(self.to_code(h)).transpose(0, 1)                       # [B, T, code_dim]

    def forward(self, z: torch.Tensor, frame_generator: nn.Module) -> torch.Tensor:
        codes = self.codes(z)
        B, T, _ = codes.shape
        frames = frame_generator(codes.reshape(B * T, self.code_dim))           # [B*T, 1, S, S]
        return frames.view(B, T, 1, *frames.shape[-2:]).transpose(1, 2)         # [B, 1, T, S, S]


class VideoDiscriminator(nn.Module):
    """D_V: video [B, 1, T, 30, 30] -> logit [B], each frame seen through the same fixed 2D projection."""

    def __init__(self, seed: int = 0, widths: tuple[int, int, int] = (256, 512, 768)):
        super().__init__()
        self.seed, self.widths = int(seed), tuple(widths)
        c1, c2, c3 = self.widths
        self.register_buffer("projection", projection_filter(seed))
        self.conv1 = nn.Conv3d(1, c1, 4, 2, 1)                        # [30, 9, 9] -> [15, 4, 4]
        self.conv2 = nn.Conv3d(c1, c2, 4, (2, 1, 1), 1)               # -> [7, 3, 3]
        self.conv3 = nn.Conv3d(c2, c3, 4, 1, (0, 1, 1))               # -> [4, 2, 2]
        self.conv4 = nn.Conv3d(c3, 1, 4, 1, (0, 1, 1))                # -> [1, 1, 1]
        init_weights(self)

    def project(self, videos: torch.Tensor) -> torch.Tensor:
        B, C, T, H, W = videos.shape
        p = F.conv2d(videos.transpose(1, 2).reshape(B * T, C, H, W), self.projection, **VIDEO_PROJ)
        return p.view(B, T, 1, *p.shape[-2:]).transpose(1, 2)                # [B, 1, T, 9, 9]

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        h = self.project(videos)
        h = F.leaky_relu(self.conv1(h), 0.2)
        h = F.leaky_relu(self.conv2(h), 0.2)
        h = F.leaky_relu(self.conv3(h), 0.2)
        return self.conv4(h).flatten(1).squeeze(1)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class DiscriminatorList(nn.ModuleList):
    """K reference discriminators as one callable: x -> logits [K, B] (row k is discriminator k).

    The reference twin of the fast discriminator banks; its state dict is K reference state dicts under
    the keys '0.', '1.', ... which is also the checkpoint format of both paths.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([d(x) for d in self])


def frame_discriminators(k: int, widths=(256, 512, 1024), seed: int = 0) -> DiscriminatorList:
    """K frame discriminators with projections drawn from seeds seed, seed + 1, ..., seed + k - 1."""
    return DiscriminatorList([FrameDiscriminator(seed + i, widths) for i in range(k)])


def video_discriminators(k: int, widths=(256, 512, 768), seed: int = 1000) -> DiscriminatorList:
    """K video discriminators with projections drawn from seeds seed, ..., seed + k - 1."""
    return DiscriminatorList([VideoDiscriminator(seed + i, widths) for i in range(k)])
