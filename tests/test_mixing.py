import torch

from privbench.mixing import mix, naive_unmix, one_hot
from privbench.nets import AdaIN3d, UnmixingNet


def random_labels(seed: int, shape=(2, 8, 8, 8), classes: int = 4) -> torch.Tensor:
    return torch.randint(0, classes, shape, generator=torch.Generator().manual_seed(seed))


def test_naive_unmixing_of_an_exact_mixed_label_returns_the_target():
    target, reference = one_hot(random_labels(0), 4), one_hot(random_labels(1), 4)
    for a in (0.05, 0.3, torch.tensor([0.5, 0.9])):
        recovered = naive_unmix(mix(target, reference, a), reference, a)
        assert torch.allclose(recovered, target, atol=1e-5)
        assert torch.equal(recovered.argmax(1), target.argmax(1))


def test_mixing_shapes_dtypes_and_weights():
    x, x_ref = torch.rand(2, 1, 8, 8, 8), torch.rand(2, 1, 8, 8, 8)
    mixed = mix(x, x_ref, torch.tensor([0.2, 0.7]))
    assert mixed.shape == x.shape and mixed.dtype == torch.float32
    assert torch.allclose(mixed[0], 0.2 * x[0] + 0.8 * x_ref[0])
    assert torch.allclose(mixed[1], 0.7 * x[1] + 0.3 * x_ref[1])
    assert torch.equal(mix(x, x_ref, 1.0), x)
    labels = one_hot(random_labels(2), 4)
    assert labels.shape == (2, 4, 8, 8, 8) and torch.all(labels.sum(1) == 1)


def test_naive_unmixing_returns_probabilities_for_any_server_output():
    reference = one_hot(random_labels(3), 4)
    server = torch.softmax(torch.randn(2, 4, 8, 8, 8), 1)
    probs = naive_unmix(server, reference, 0.3)
    assert probs.min() >= 0 and torch.allclose(probs.sum(1), torch.ones(1))


def test_untrained_adain_is_instance_norm_and_conditioning_changes_it():
    torch.manual_seed(0)
    adain, x = AdaIN3d(3), torch.randn(2, 3, 4, 4, 4)
    plain = torch.nn.functional.instance_norm(x)
    assert torch.allclose(adain(x, torch.tensor([0.1, 0.9])), plain, atol=1e-6)
    torch.nn.init.normal_(adain.predict[-1].weight)
    low, high = adain(x, torch.tensor([0.1, 0.1])), adain(x, torch.tensor([0.9, 0.9]))
    assert not torch.allclose(low, high)


def test_unmixing_net_shapes_and_gradient_to_the_condition():
    torch.manual_seed(0)
    net = UnmixingNet(num_classes=4, features=8)
    y_mix = torch.softmax(torch.randn(2, 4, 16, 16, 16), 1)
    y_ref = one_hot(random_labels(4, (2, 16, 16, 16)), 4)
    a = torch.tensor([0.3, 0.6])
    logits = net(y_mix, y_ref, a)
    assert logits.shape == (2, 4, 16, 16, 16)
    logits.square().mean().backward()
    predictor = net.enc1.norm.predict[-1]
    assert predictor.weight.grad is not None and predictor.weight.grad.abs().sum() > 0
