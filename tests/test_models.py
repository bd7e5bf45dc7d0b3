"""Reference models: shapes and parameter counts at paper widths, fixed projections, G_V batch independence."""
import pytest
import torch

from vidgan_fast.models import (DiscriminatorList, FrameDiscriminator, FrameGenerator, VideoDiscriminator,
                                VideoGenerator, count_parameters, frame_discriminators, projection_filter,
                                video_discriminators)


def conv_params(cin, cout, k, dims=2, bias=True):
    return cin * cout * k ** dims + (cout if bias else 0)


def test_frame_generator_paper_shape_and_count():
    g = FrameGenerator()
    with torch.no_grad():
        out = g(torch.randn(3, 100))
    assert out.shape == (3, 1, 30, 30)
    assert out.abs().max() <= 1.0
    expected = (100 * 4096 + 4096 + 2 * 4096                       # fc + BN1d
                + conv_params(1024, 1024, 4) + 2 * 1024
                + conv_params(1024, 512, 4) + 2 * 512
                + conv_params(512, 256, 4) + 2 * 256
                + conv_params(256, 1, 4))
    assert count_parameters(g) == expected == 27_694_337


def test_frame_discriminator_paper_shape_and_count():
    d = FrameDiscriminator(seed=7)
    assert d(torch.randn(5, 1, 30, 30)).shape == (5,)
    assert d.project(torch.randn(2, 1, 30, 30)).shape == (2, 1, 15, 15)
    expected = conv_params(1, 256, 4) + conv_params(256, 512, 4) + conv_params(512, 1024, 4) + conv_params(1024, 1, 4)
    assert count_parameters(d) == expected == 10_508_033


def test_video_generator_paper_shape_and_count():
    g, gv = FrameGenerator(), VideoGenerator()
    g.eval()
    with torch.no_grad():
        v = gv(torch.randn(2, 100), g)
        codes = gv.codes(torch.randn(2, 100))
    assert v.shape == (2, 1, 30, 30, 30)
    assert codes.shape == (2, 30, 100) and codes.abs().max() < 1
    dense = sum(a * b + 2 * b for a, b in [(100, 512), (512, 1024), (1024, 2048), (2048, 3840)])
    lstm_layer = lambda inp: 2 * (4 * 256 * (inp + 256) + 2 * 4 * 256)    # both directions, two bias vectors
    expected = dense + lstm_layer(128) + lstm_layer(512) + 512 * 100 + 100
    assert count_parameters(gv) == expected == 12_970_596


def test_video_discriminator_paper_shape_and_count():
    d = VideoDiscriminator(seed=3)
    x = torch.randn(2, 1, 30, 30, 30)
    assert d.project(x).shape == (2, 1, 30, 9, 9)
    assert d(x).shape == (2,)
    expected = (conv_params(1, 256, 4, 3) + conv_params(256, 512, 4, 3) + conv_params(512, 768, 4, 3)
                + conv_params(768, 1, 4, 3))
    assert count_parameters(d) == expected == 33_621_505


@pytest.mark.parametrize("make", [lambda s: FrameDiscriminator(s, (4, 8, 16)), lambda s: VideoDiscriminator(s, (4, 8, 8))])
def test_projection_is_fixed_unit_norm_buffer(make):
    d = make(11)
    names = [n for n, _ in d.named_parameters()]
    assert "projection" not in names and "projection" in dict(d.named_buffers())
    assert torch.allclose(d.projection.norm(), torch.tensor(1.0), atol=1e-6)
    assert torch.equal(d.projection, projection_filter(11))         # drawn from the seed alone
    assert not torch.equal(d.projection, projection_filter(12))
    opt = torch.optim.RMSprop(d.parameters(), lr=1e-2)
    before = d.projection.clone()
    d(torch.randn(2, 1, 30, 30) if isinstance(d, FrameDiscriminator) else torch.randn(2, 1, 30, 30, 30)).sum().backward()
    opt.step()
    assert torch.equal(d.projection, before)
    assert all(p is not d.projection for group in opt.param_groups for p in group["params"])


def test_projection_matches_explicit_conv():
    d = FrameDiscriminator(seed=1, widths=(4, 8, 16))
    x = torch.randn(1, 1, 30, 30, dtype=torch.float64)
    w = d.projection.double()[0, 0]
    xp = torch.nn.functional.pad(x[0, 0], (3, 3, 3, 3))
    manual = torch.stack([torch.stack([(xp[2 * i:2 * i + 8, 2 * j:2 * j + 8] * w).sum() for j in range(15)])
                          for i in range(15)])
    assert torch.allclose(d.double().project(x)[0, 0], manual, atol=1e-12)


def test_video_generator_batch_independence():
    torch.manual_seed(0)
    g = FrameGenerator(widths=(16, 16, 8, 8))
    gv = VideoGenerator(hidden=(32, 32, 64), lstm_hidden=16)
    # a few training-mode passes so BN running stats are not trivial
    for _ in range(3):
        gv(torch.randn(6, 100), g)
    g.eval(), gv.eval()
    z = torch.randn(5, 100)
    with torch.no_grad():
        batch = gv(z, g)
        singles = torch.cat([gv(z[i:i + 1], g) for i in range(5)])
        permuted = gv(z.flip(0), g).flip(0)
    torch.testing.assert_close(batch, singles, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(batch, permuted, rtol=1e-5, atol=1e-6)
    # frames come out in time order: frame t of video b is G_F(codes[b, t])
    with torch.no_grad():
        codes = gv.codes(z)
        torch.testing.assert_close(batch[3, :, 17], g(codes[3, 17:18])[0], rtol=1e-5, atol=1e-6)


def test_discriminator_list_stacks_logits():
    ds = frame_discriminators(3, widths=(4, 8, 16))
    x = torch.randn(5, 1, 30, 30)
    assert torch.equal(ds(x), torch.stack([d(x) for d in ds]))
    assert [d.seed for d in ds] == [0, 1, 2]
    vs = video_discriminators(2, widths=(4, 8, 8))
    assert isinstance(vs, DiscriminatorList) and vs(torch.randn(3, 1, 30, 30, 30)).shape == (2, 3)
    assert set(ds.state_dict()) >= {"0.projection", "2.conv4.bias"}
