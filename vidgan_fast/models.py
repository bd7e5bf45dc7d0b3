"""Reference models (plain PyTorch): the spec every fast op is checked against.

Layer by layer as in the paper (the README's first paragraph sums them up). Widths are constructor arguments
with the paper's values as defaults, so tests and the `tiny` preset build small versions of the same architecture.
Frames are [B, 1, 30, 30], videos [B, 1, T, 30, 30] (Conv3d layout), codes [B, 100], values in [-1, 1].
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import CODE_MAPS     # G_V's code maps (defined in the torch-free config.py)

FRAME_SIZE = 30
PROJ_KERNEL = 8
FRAME_PROJ = dict(stride=2, padding=3)   # 30x30 -> 15x15
VIDEO_PROJ = dict(stride=3, padding=2)   # 30x30 -> 9x9 per frame
DISC_KERNEL = 4
# The discriminators' convolutions after the projection, (stride, padding) per layer: the one definition, read by
# the reference modules below and by the fast banks (fast/bank.py). conv1..conv3 are followed by LeakyReLU(0.2).
LEAKY_SLOPE = 0.2
FRAME_GEOMETRY = {"conv1": ((2, 2), (2, 2)),            # 15 -> 8
                  "conv2": ((2, 2), (1, 1)),            # 8 -> 4
                  "conv3": ((2, 2), (1, 1)),            # 4 -> 2
                  "conv4": ((1, 1), (1, 1))}            # 2 -> 1: the logit
VIDEO_GEOMETRY = {"conv1": ((2, 2, 2), (1, 1, 1)),      # [30, 9, 9] -> [15, 4, 4]
                  "conv2": ((2, 1, 1), (1, 1, 1)),      # -> [7, 3, 3]
                  "conv3": ((1, 1, 1), (0, 1, 1)),      # -> [4, 2, 2]
                  "conv4": ((1, 1, 1), (0, 1, 1))}      # -> [1, 1, 1]: the logit


def projection_filter(seed: int, size: int = PROJ_KERNEL) -> torch.Tensor:
    """The fixed random projection of discriminator `seed`: a Gaussian 1->1 filter of unit L2 norm."""
    g = torch.Generator().manual_seed(int(seed))
    w = torch.randn(1, 1, size, size, generator=g, dtype=torch.float64)
    return (w / w.norm()).float()


def project_frames(frames: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """The fixed projections: frames [B, 1, 30, 30], filters [K, 8, 8] -> [B, K, 15, 15] (one conv2d)."""
    return F.conv2d(frames, filters.detach().unsqueeze(1), **FRAME_PROJ)


def project_videos(videos: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """Each frame through the fixed projections: videos [B, 1, T, 30, 30], filters [K, 8, 8] -> [B, K, T, 9, 9]."""
    B, _, T, H, W = videos.shape
    p = F.conv2d(videos.transpose(1, 2).reshape(B * T, 1, H, W), filters.detach().unsqueeze(1), **VIDEO_PROJ)
    return p.view(B, T, filters.shape[0], *p.shape[-2:]).transpose(1, 2)


def discriminator_convs(widths, geometry: dict, conv: type) -> dict:
    """The four convolutions of a discriminator of `widths` (c1, c2, c3), 1 -> c1 -> c2 -> c3 -> 1."""
    channels = (1, *widths, 1)
    return {name: conv(cin, cout, DISC_KERNEL, stride, padding)
            for (name, (stride, padding)), cin, cout in zip(geometry.items(), channels[:-1], channels[1:])}


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


# G_F's transposed convolutions (kernel 4, stride 2), their paddings: 2 -> 4 -> 8 -> 16 -> 30. The one definition,
# read by FrameGenerator and by the folded fast twin (fast/frozen_generator.py).
GF_KERNEL, GF_STRIDE = 4, 2
GF_PADDINGS = (1, 1, 1, 2)


class FrameGenerator(nn.Module):
    """G_F: code [B, z_dim] -> frame [B, 1, 30, 30] in [-1, 1] (DCGAN-like)."""

    def __init__(self, z_dim: int = 100, widths: tuple[int, int, int, int] = (1024, 1024, 512, 256)):
        super().__init__()
        self.z_dim, self.widths = z_dim, tuple(widths)
        c0, c1, c2, c3 = self.widths
        self.fc = nn.Linear(z_dim, c0 * 4)
        self.fc_bn = nn.BatchNorm1d(c0 * 4)
        up = [nn.ConvTranspose2d(a, b, GF_KERNEL, GF_STRIDE, p) for a, b, p in zip(self.widths, (c1, c2, c3, 1),
                                                                                     GF_PADDINGS)]
        self.up1, self.bn1 = up[0], nn.BatchNorm2d(c1)    # 2 -> 4
        self.up2, self.bn2 = up[1], nn.BatchNorm2d(c2)    # 4 -> 8
        self.up3, self.bn3 = up[2], nn.BatchNorm2d(c3)    # 8 -> 16
        self.out = up[3]                                  # 16 -> 30
        init_weights(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc_bn(self.fc(z))).view(z.shape[0], self.widths[0], 2, 2)
        h = F.relu(self.bn1(self.up1(h)))
        h = F.relu(self.bn2(self.up2(h)))
        h = F.relu(self.bn3(self.up3(h)))
        return torch.tanh(self.out(h))


def _classify(d: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """A discriminator's learned layers on its projection h [B, 1, ...]: conv1..conv3 with LeakyReLU, then the
    logit conv4 -> [B] (frame and video discriminators alike)."""
    h = F.leaky_relu(d.conv1(h), LEAKY_SLOPE)
    h = F.leaky_relu(d.conv2(h), LEAKY_SLOPE)
    h = F.leaky_relu(d.conv3(h), LEAKY_SLOPE)
    return d.conv4(h).flatten(1).squeeze(1)


class FrameDiscriminator(nn.Module):
    """D_F: frame [B, 1, 30, 30] -> logit [B], behind its own fixed projection (a buffer)."""

    def __init__(self, seed: int = 0, widths: tuple[int, int, int] = (256, 512, 1024)):
        super().__init__()
        self.seed, self.widths = int(seed), tuple(widths)
        self.register_buffer("projection", projection_filter(seed))           # [1, 1, 8, 8]
        for name, conv in discriminator_convs(self.widths, FRAME_GEOMETRY, nn.Conv2d).items():
            setattr(self, name, conv)
        init_weights(self)

    project_many = staticmethod(project_frames)     # frames, filters [K, 8, 8] -> [B, K, 15, 15]

    def project(self, frames: torch.Tensor) -> torch.Tensor:
        return project_frames(frames, self.projection[0])

    def classify(self, h: torch.Tensor) -> torch.Tensor:
        """The learned layers: this discriminator's projection [B, 1, 15, 15] -> logit [B]."""
        return _classify(self, h)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.classify(self.project(frames))


def map_codes(u: torch.Tensor, code_map: str = "tanh") -> torch.Tensor:
    """G_V's last activation, over the last dimension of u.

    tanh: the paper's; codes in (-1, 1). sphere: u scaled to norm sqrt(d), the radius at which G_F's training
    codes z ~ N(0, I_d) concentrate (|z| = sqrt(d) +- 0.7), so every code G_V can emit is a typical G_F input:
    no saturation, no region of small or clipped codes that G_F never saw (see `calibrate_codes`).
    """
    if code_map == "tanh":
        return torch.tanh(u)
    if code_map == "sphere":
        return u * (u.shape[-1] ** 0.5 / u.norm(dim=-1, keepdim=True).clamp_min(1e-12))
    raise ValueError(f"unknown code map {code_map!r}; choose one of {', '.join(CODE_MAPS)}")


def time_filter(steps: int, sigma: float) -> torch.Tensor:
    """[steps, steps] Gaussian low-pass over time (std `sigma` frames, each row sums to 1; the taps that fall
    past either end are folded onto the end frame, i.e. the sequence is padded by repeating its ends); the
    identity for sigma 0.

    Why (G_V's `smoothing`, 0 at the paper preset): the LSTM's per-step inputs are 30 independent slices of the
    dense stack's output, so its codes step in a new direction every frame. G_F renders such a walk as balls that
    jitter (measured on the small preset, seed 0, 300 videos: 10.9 degrees between consecutive codes on the
    radius-10 sphere, speed 1.39 px/frame, temporal coherence 0.45), while G_F walked along great circles at
    4-6 degrees a frame moves its balls at 0.5-0.8 px/frame with coherence 0.92-0.96 (seed 0; 0.90-0.97 over seeds 0-2). A fixed low-pass with
    sigma = 3 frames on the same trained G_V gave 4.7 degrees, speed 0.67, coherence 0.92, the same diversity
    (0.76) and 3-blob frames. The filter is linear and fixed, so gradients flow through it to G_V."""
    t = torch.arange(steps, dtype=torch.float64)
    if sigma <= 0:
        return torch.eye(steps, dtype=torch.float32)
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (offsets / sigma) ** 2)
    taps /= taps.sum()
    source = (t[:, None] + offsets[None, :]).clamp(0, steps - 1).long()       # [steps, taps]: replicate padding
    out = torch.zeros(steps, steps, dtype=torch.float64)
    out.scatter_add_(1, source, taps.expand(steps, -1).contiguous())
    return out.float()


class VideoGenerator(nn.Module):
    """G_V: z_v [B, z_dim] -> codes [B, T, code_dim] -> (frozen G_F) -> video [B, 1, T, 30, 30]."""

    def __init__(self, z_dim: int = 100, hidden: tuple[int, ...] = (512, 1024, 2048), steps: int = 30,
                 step_dim: int = 128, lstm_hidden: int = 256, code_dim: int = 100, code_map: str = "tanh",
                 forget_bias: float = 0.0, smoothing: float = 0.0):
        super().__init__()
        if code_map not in CODE_MAPS:
            raise ValueError(f"unknown code map {code_map!r}; choose one of {', '.join(CODE_MAPS)}")
        self.z_dim, self.steps, self.step_dim, self.code_dim = z_dim, steps, step_dim, code_dim
        self.code_map = code_map
        dims = [z_dim, *hidden, steps * step_dim]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b, bias=False), nn.BatchNorm1d(b), nn.ReLU()]
        self.dense = nn.Sequential(*layers)
        self.lstm = nn.LSTM(step_dim, lstm_hidden, num_layers=2, bidirectional=True)
        self.to_code = nn.Linear(2 * lstm_hidden, code_dim)
        init_weights(self)
        if forget_bias:       # both layers, both directions; PyTorch's gate order is (input, forget, cell, output)
            for name, b in self.lstm.named_parameters():
                if name.startswith("bias_ih"):
                    nn.init.constant_(b[lstm_hidden:2 * lstm_hidden], float(forget_bias))
        self.smoothing = float(smoothing)
        # not persistent: rebuilt from the config, so checkpoints keep the paper's keys
        self.register_buffer("time_filter", time_filter(steps, self.smoothing), persistent=False)

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """Latent codes [B, T, code_dim]: in (-1, 1) (code_map 'tanh', the paper's), or of norm sqrt(code_dim)
        (code_map 'sphere'). Sample b depends only on z[b] when BN is in eval mode."""
        B = z.shape[0]
        h = self.dense(z).view(B, self.steps, self.step_dim).transpose(0, 1)   # [T, B, step_dim]
        h, _ = self.lstm(h)                                                       # [T, B, 2H]
        u = self.to_code(h)                                                       # [T, B, code_dim]
        if self.smoothing:
            u = torch.einsum("ts,sbc->tbc", self.time_filter.to(u.dtype), u)
        return map_codes(u, self.code_map).transpose(0, 1)                       # [B, T, code_dim]

    def forward(self, z: torch.Tensor, frame_generator: nn.Module) -> torch.Tensor:
        codes = self.codes(z)
        B, T, _ = codes.shape
        frames = frame_generator(codes.reshape(B * T, self.code_dim))           # [B*T, 1, S, S]
        return frames.view(B, T, 1, *frames.shape[-2:]).transpose(1, 2)         # [B, 1, T, S, S]


# tanh(N(0, s^2)) has mean |c| = 0.79 at s = 2.5, that of G_F's training codes z ~ N(0, I) (sqrt(2 / pi) = 0.80);
# at s = 1 it is 0.56, and a trained tiny G_F draws fewer, larger blobs there (2.2 blobs per frame against 2.9).
CALIBRATED_CODE_STD = 2.5


@torch.no_grad()
def calibrate_codes(video_generator: VideoGenerator, n: int = 256, seed: int = 0,
                    std: float = CALIBRATED_CODE_STD) -> VideoGenerator:
    """Rescale G_V's last layer (`to_code`) once so that its pre-tanh outputs have mean 0 and std `std` per code
    dimension over z_v ~ N(0, I) (n draws from `seed`) and the T steps, in place; returns the module.

    Why (the `calibrate_codes` option, off at the paper preset): with the DCGAN N(0, 0.02) init, G_V's codes
    start at |c| ~ 0.01, where G_F draws near-black frames and which G_F never saw in phase 1 (z ~ N(0, I));
    the video discriminators win within a few dozen steps and G_V saturates into one static video for every z.
    Starting at the scale of G_F's training codes keeps G_V's frames on G_F's manifold from step 0. The forward
    runs with batch norm in training mode (as in the training steps), and the batch norms' running statistics are
    set to that batch's: with the N(0, 0.02) init the dense pre-activations have variance ~1e-4, so running
    variances that start at 1 take a few hundred steps (momentum 0.1) to forget it, and until then the eval-mode
    G_V (samples, `vidgan eval`) shrinks every z-dependent signal and draws nearly one video for every z.
    """
    was_training = video_generator.training
    norms = [m for m in video_generator.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    try:
        video_generator.train()
        for m in norms:                           # momentum None: the running statistics of this one batch
            m.reset_running_stats()
            m.momentum = None
        p = video_generator.to_code.weight
        z = torch.randn(n, video_generator.z_dim, generator=torch.Generator().manual_seed(int(seed))).to(p.device)
        B = z.shape[0]
        h = video_generator.dense(z).view(B, video_generator.steps, video_generator.step_dim).transpose(0, 1)
        h, _ = video_generator.lstm(h)
        pre = video_generator.to_code(h).reshape(-1, video_generator.code_dim)        # [T * n, code_dim]
        mean = pre.mean(0)
        gain = std / pre.std(0).clamp_min(1e-8)
        video_generator.to_code.weight.mul_(gain.unsqueeze(1))
        video_generator.to_code.bias.sub_(mean).mul_(gain)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        video_generator.train(was_training)
    return video_generator


class VideoDiscriminator(nn.Module):
    """D_V: video [B, 1, T, 30, 30] -> logit [B], each frame seen through the same fixed 2D projection."""

    def __init__(self, seed: int = 0, widths: tuple[int, int, int] = (256, 512, 768)):
        super().__init__()
        self.seed, self.widths = int(seed), tuple(widths)
        self.register_buffer("projection", projection_filter(seed))           # [1, 1, 8, 8]
        for name, conv in discriminator_convs(self.widths, VIDEO_GEOMETRY, nn.Conv3d).items():
            setattr(self, name, conv)
        init_weights(self)

    project_many = staticmethod(project_videos)     # videos, filters [K, 8, 8] -> [B, K, T, 9, 9]

    def project(self, videos: torch.Tensor) -> torch.Tensor:
        return project_videos(videos, self.projection[0])                      # [B, 1, T, 9, 9]

    def classify(self, h: torch.Tensor) -> torch.Tensor:
        """The learned layers: this discriminator's projection [B, 1, T, 9, 9] -> logit [B]."""
        return _classify(self, h)

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        return self.classify(self.project(videos))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class DiscriminatorList(nn.ModuleList):
    """K reference discriminators as one callable: x -> logits [K, B] (row k is discriminator k).

    The reference twin of the fast discriminator banks; its state dict is K reference state dicts under
    the keys '0.', '1.', ... which is also the checkpoint format of both paths.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The K fixed projections as one convolution with K output channels (the same products as K separate
        # ones, per channel), then each discriminator's learned layers on its own channel. On a CPU this is
        # 1.2x faster a phase-1 step than K projections of one channel each (benchmarks/RESULTS.md).
        filters = torch.cat([d.projection for d in self]).flatten(0, 1)             # [K, 8, 8]
        h = type(self[0]).project_many(x, filters).split(1, dim=1)                    # K x [B, 1, ...]
        return torch.stack([d.classify(h_k) for d, h_k in zip(self, h)])

    @property
    def k(self) -> int:
        return len(self)

    # The checkpoint layout, which both paths save: the fast banks (fast/bank.py) implement the same two methods.

    def reference_state_dict(self) -> dict:
        return self.state_dict()

    def reference_optimizer_state(self, optimizer_state: dict) -> dict:
        """The state dict of an optimizer over self.parameters(), in the checkpoint layout: as it is."""
        return optimizer_state


def frame_discriminators(k: int, widths=(256, 512, 1024), seed: int = 0) -> DiscriminatorList:
    """K frame discriminators with projections drawn from seeds seed, seed + 1, ..., seed + k - 1."""
    return DiscriminatorList([FrameDiscriminator(seed + i, widths) for i in range(k)])


def video_discriminators(k: int, widths=(256, 512, 768), seed: int = 1000) -> DiscriminatorList:
    """K video discriminators with projections drawn from seeds seed, ..., seed + k - 1."""
    return DiscriminatorList([VideoDiscriminator(seed + i, widths) for i in range(k)])
