"""Shapes, gradients and documented properties of the network factories in privbench.nets."""

import pytest
import torch

from privbench.nets import EncoderNet, FlowGenerator, ScoreNet, SegmentationNet, SiameseDiscriminator, UnmixingNet

UNETPP = (4, 4, 8, 8, 16, 4)  # tiny U-Net++ / U-Net widths
# MONAI's BasicUNetPlusPlus builds these output heads even without deep supervision, and
# SegmentationNet returns only the final output: they are the only parameters left untrained
DEEP_SUPERVISION_HEADS = {"final_conv_0_1", "final_conv_0_2", "final_conv_0_3"}


def _probs(shape):
    return torch.softmax(torch.randn(shape), 1)


def _one_hot(shape):
    labels = torch.randint(0, shape[1], (shape[0], *shape[2:]))
    return torch.nn.functional.one_hot(labels, shape[1]).movedim(-1, 1).float()


# name, factory, inputs(net), expected output shape
CASES = [
    ("segmentation", lambda: SegmentationNet(1, 4, UNETPP),
     lambda net: (torch.randn(1, 1, 32, 32, 32),), (1, 4, 32, 32, 32)),
    ("segmentation-2ch-anisotropic", lambda: SegmentationNet(2, 3, UNETPP),
     lambda net: (torch.randn(2, 2, 16, 16, 32),), (2, 3, 16, 16, 32)),
    ("encoder", lambda: EncoderNet(UNETPP),
     lambda net: (torch.randn(1, 1, 32, 32, 32),), (1, 1, 32, 32, 32)),
    ("encoder-anisotropic", lambda: EncoderNet(UNETPP),
     lambda net: (torch.randn(1, 1, 16, 32, 48),), (1, 1, 16, 32, 48)),
    ("unmixing", lambda: UnmixingNet(4, 4),
     lambda net: (_probs((2, 4, 16, 16, 16)), _one_hot((2, 4, 16, 16, 16)), torch.tensor([0.3, 0.6])),
     (2, 4, 16, 16, 16)),
    ("unmixing-2-classes-anisotropic", lambda: UnmixingNet(2, 8),
     lambda net: (_probs((1, 2, 8, 12, 16)), _one_hot((1, 2, 8, 12, 16)), torch.tensor([0.5])),
     (1, 2, 8, 12, 16)),
    ("score-scalar-sigma", lambda: ScoreNet(UNETPP),
     lambda net: (torch.randn(1, 1, 16, 32, 16), 0.5), (1, 1, 16, 32, 16)),
    ("score-per-sample-sigma", lambda: ScoreNet(UNETPP),
     lambda net: (torch.randn(2, 1, 32, 16, 16), torch.tensor([0.1, 1.0])), (2, 1, 32, 16, 16)),
    ("siamese", lambda: SiameseDiscriminator((4, 8, 8, 16)),
     lambda net: (torch.rand(3, 1, 32, 32, 32), torch.rand(3, 1, 32, 32, 32)), (3,)),
    ("siamese-two-blocks", lambda: SiameseDiscriminator((4, 8)),
     lambda net: (torch.rand(2, 1, 16, 16, 16), torch.rand(2, 1, 16, 16, 16)), (2,)),
    ("flow", lambda: FlowGenerator(4, 8, max_velocity=2.0, spacing=8, steps=4),
     lambda net: (torch.randn(2, 4, *net.grid_shape((32, 32, 32))), (32, 32, 32)), (2, 3, 32, 32, 32)),
    ("flow-inverse-anisotropic", lambda: FlowGenerator(4, 8, max_velocity=2.0, spacing=8, steps=4),
     lambda net: (torch.randn(1, 4, *net.grid_shape((20, 24, 28))), (20, 24, 28), True), (1, 3, 20, 24, 28)),
]


@pytest.mark.parametrize("factory, inputs, shape", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_output_shape_and_finite_gradients_for_every_parameter(factory, inputs, shape):
    torch.manual_seed(0)
    net = factory()
    out = net(*inputs(net))
    assert out.shape == shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()  # a random projection: no symmetric cancellation
    params = dict(net.named_parameters())
    assert params
    missing = {n for n, p in params.items() if p.grad is None}
    assert missing == {n for n in params if DEEP_SUPERVISION_HEADS & set(n.split("."))}
    bad = [n for n, p in params.items() if n not in missing and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradient for {bad}"
    assert sum(float(p.grad.abs().sum()) for n, p in params.items() if n not in missing) > 0


def test_encoder_output_is_an_image_in_the_unit_interval():
    torch.manual_seed(0)
    with torch.no_grad():
        out = EncoderNet(UNETPP)(10 * torch.randn(1, 1, 32, 32, 32))
    assert 0 <= float(out.min()) and float(out.max()) <= 1 and float(out.std()) > 0


def test_score_net_divides_the_unet_output_by_sigma():
    torch.manual_seed(0)
    net = ScoreNet(UNETPP).eval()
    x = torch.randn(2, 1, 16, 16, 32)
    with torch.no_grad():
        unit = net(x, 1.0)
        assert torch.allclose(unit, net.net(x), atol=1e-6)
        assert torch.allclose(net(x, 0.25), 4 * unit, rtol=1e-5, atol=1e-6)
        per_sample = net(x, torch.tensor([0.5, 2.0]))
    assert torch.allclose(per_sample[0], 2 * unit[0], rtol=1e-5, atol=1e-6)
    assert torch.allclose(per_sample[1], 0.5 * unit[1], rtol=1e-5, atol=1e-6)


def test_untrained_unmixing_ignores_a_and_trained_conditioning_uses_it():
    """The AdaIN predictors' last layers start at zero: until they learn, ``a`` changes nothing."""
    torch.manual_seed(0)
    net = UnmixingNet(3, 4)
    y_mix, y_ref = _probs((2, 3, 8, 8, 8)), _one_hot((2, 3, 8, 8, 8))
    low, high = torch.tensor([0.1, 0.1]), torch.tensor([0.9, 0.9])
    with torch.no_grad():
        assert torch.equal(net(y_mix, y_ref, low), net(y_mix, y_ref, high))
        for block in (net.enc1, net.enc2, net.dec2, net.dec1):
            torch.nn.init.normal_(block.norm.predict[-1].weight, std=0.5)
        changed = (net(y_mix, y_ref, low) - net(y_mix, y_ref, high)).abs().amax(dim=(1, 2, 3, 4))
    assert (changed > 1e-3).all()  # every sample's output depends on its own a


def test_siamese_embedding_size_and_initial_calibration():
    """Embeddings are the flattened last feature map, unit length; an untrained discriminator's
    logit is ``5 * cosine`` (scale 5, bias 0), so a patch paired with itself scores 5."""
    torch.manual_seed(0)
    disc = SiameseDiscriminator((4, 8, 8, 16))
    first, second = torch.rand(3, 1, 32, 32, 32), torch.rand(3, 1, 32, 32, 32)
    embedding = disc.embed(first)
    assert embedding.shape == (3, 16 * 2 ** 3)  # 32 / 2**4 = 2 voxels per axis
    assert torch.allclose(embedding.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(disc(first, first), torch.full((3,), 5.0), atol=1e-4)
    assert disc(first, second).abs().max() <= 5.0 + 1e-4


@pytest.mark.parametrize("size, spacing, grid", [
    ((32, 32, 32), 8, (5, 5, 5)),
    ((33, 32, 31), 8, (5, 5, 5)),
    ((20, 24, 28), 8, (4, 4, 5)),
    ((18, 9, 1), 4, (6, 3, 1)),
])
def test_flow_control_grid_covers_the_volume(size, spacing, grid):
    flow = FlowGenerator(2, 4, spacing=spacing)
    assert flow.grid_shape(size) == grid
    assert all((g - 1) * spacing >= n - 1 for g, n in zip(grid, size))  # the last point reaches the edge
    velocity = flow.velocity(torch.randn(1, 2, *grid), size)
    assert velocity.shape == (1, 3, *size)


def test_flow_velocity_is_bounded_and_keyed_by_the_noise():
    torch.manual_seed(0)
    flow = FlowGenerator(4, 8, max_velocity=1.5, spacing=8)
    torch.nn.init.normal_(flow.body[-1].weight, std=5.0)  # saturate the tanh
    grid = flow.grid_shape((24, 24, 24))
    noise = torch.randn(2, 4, *grid)
    with torch.no_grad():
        velocity = flow.velocity(noise, (24, 24, 24))
        assert 1.0 < float(velocity.abs().max()) <= 1.5
        assert not torch.allclose(velocity[0], velocity[1])
        assert torch.equal(velocity, flow.velocity(noise.clone(), (24, 24, 24)))
        assert float(flow(noise, (24, 24, 24)).abs().max()) <= 1.5 + 1e-5  # displacement within the bound
