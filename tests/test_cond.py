"""Networks and conditioning: time embedding, class labels with guidance (Ho & Salimans 2022), masks."""
import pytest
import torch

from cond import ConditionalDDPM, guided_eps
from ddpm import linear_beta_schedule
from figures import class_grid_labels, mask_triplets
from unet import CNN, UNet, sinusoidal_embedding


def test_sinusoidal_embedding_values():
    """Vaswani et al. 3.5 with dim 4: w = (1, 10000^-0.5 = 0.01); t = 2 -> [sin 2, sin 0.02, cos 2, cos 0.02]."""
    e = sinusoidal_embedding(torch.tensor([0, 2]), 4)
    assert e[0].tolist() == [0.0, 0.0, 1.0, 1.0]
    expected = torch.tensor([2.0, 0.02])
    assert torch.allclose(e[1], torch.cat([expected.sin(), expected.cos()]), atol=1e-6)


@pytest.mark.parametrize("net", [CNN(in_channels=3), UNet(in_channels=3, widths=(16, 32, 32))])
def test_networks_keep_the_shape_and_use_t(net):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 28, 28)
    a, b = net(x, torch.tensor([0, 0])), net(x, torch.tensor([500, 500]))
    assert a.shape == x.shape and not torch.allclose(a, b)


def test_unet_refuses_sizes_not_divisible_by_4():
    with pytest.raises(ValueError, match="divisible by 4"):
        UNet(widths=(8, 16, 16))(torch.randn(1, 1, 30, 30), torch.tensor([0]))


@pytest.mark.parametrize("make", [lambda: CNN(num_classes=3), lambda: UNet(widths=(16, 32, 32), num_classes=3)])
def test_output_depends_on_the_label_and_null_is_the_default(make):
    torch.manual_seed(0)
    net = make()
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([10, 10])
    out = [net(x, t, y=torch.full((2,), c)) for c in range(3)]
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[1], out[2])
    assert torch.equal(net(x, t), net(x, t, y=torch.full((2,), 3)))  # y=None means the null class 3


def test_guidance_formula_by_hand():
    """Eq. (6): (1 + w) eps_c - w eps_u; w = 2, eps_c = 1, eps_u = 0.25 -> 3 - 0.5 = 2.5."""
    assert guided_eps(torch.tensor(1.0), torch.tensor(0.25), 2.0).item() == 2.5
    assert guided_eps(torch.tensor(1.0), torch.tensor(0.25), 0.0).item() == 1.0


class LabelEcho(torch.nn.Module):
    """net whose prediction is the label it was given (null = 3), to read off the guidance."""

    def forward(self, x_t, t, y=None, mask=None):
        return y.float().view(-1, 1, 1, 1).expand_as(x_t)


def test_predict_eps_combines_conditional_and_null_predictions():
    """y = 1, null = 3, w = 2: (1 + 2) * 1 - 2 * 3 = -3; w = 0: the conditional 1."""
    model = ConditionalDDPM(LabelEcho(), linear_beta_schedule(10), num_classes=3, guidance_scale=2.0)
    x, t, y = torch.zeros(2, 1, 2, 2), torch.tensor([4, 4]), torch.tensor([1, 1])
    assert model.predict_eps(x, t, y=y).unique().tolist() == [-3.0]
    model.guidance_scale = 0.0
    assert model.predict_eps(x, t, y=y).unique().tolist() == [1.0]


def test_p_uncond_1_never_shows_the_labels():
    """Ho & Salimans Alg. 1: with p_uncond = 1 every label becomes null, so the loss is the same
    whatever labels are passed; with p_uncond = 0 it differs."""
    torch.manual_seed(0)
    net = CNN(hidden=(8, 8), num_classes=3)
    x0 = torch.randn(8, 1, 8, 8)
    ya, yb = torch.zeros(8, dtype=torch.long), torch.full((8,), 2)
    for p, same in ((1.0, True), (0.0, False)):
        model = ConditionalDDPM(net, linear_beta_schedule(10), num_classes=3, p_uncond=p)
        torch.manual_seed(1)
        la = model.loss(x0, y=ya)
        torch.manual_seed(1)
        lb = model.loss(x0, y=yb)
        assert (la.item() == lb.item()) == same


def test_class_grid_has_one_row_per_class():
    labels = class_grid_labels(10, per_row=8)
    assert labels.view(10, 8).T.tolist() == [list(range(10))] * 8


@pytest.mark.parametrize("make", [lambda: CNN(cond_channels=1), lambda: UNet(widths=(16, 32, 32), cond_channels=1)])
def test_mask_is_concatenated_as_extra_input_channels(make):
    torch.manual_seed(0)
    net = make()
    first = net.convs[0] if isinstance(net, CNN) else net.inp
    assert first.in_channels == 2  # image channel + mask channel
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([3, 3])
    m0, m1 = torch.zeros(2, 1, 28, 28), torch.zeros(2, 1, 28, 28)
    m1[..., 10:20, 10:20] = 1
    assert not torch.allclose(net(x, t, mask=m0), net(x, t, mask=m1))


def test_wrong_or_missing_mask_is_a_clear_error():
    net = CNN(cond_channels=1)
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([3, 3])
    with pytest.raises(ValueError, match=r"mask of shape \(2, 1, 32, 32\) does not match images"):
        net(x, t, mask=torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="needs a mask"):
        net(x, t)
    with pytest.raises(ValueError, match="without mask channels"):
        CNN()(x, t, mask=torch.zeros(2, 1, 28, 28))


def test_mask_triplets_layout_and_outline():
    """mask | image | overlay per sample; the overlay is red exactly on the mask's border."""
    masks = torch.zeros(1, 1, 8, 8)
    masks[..., 2:6, 2:6] = 1
    x = torch.zeros(1, 1, 8, 8)
    out = mask_triplets(x, masks)
    assert out.shape == (3, 3, 8, 8)
    assert torch.equal(out[0, 0], masks[0, 0] * 2 - 1) and torch.equal(out[1], torch.zeros(3, 8, 8))
    red = (out[2, 0] == 1) & (out[2, 1] == -1)
    assert red.sum().item() == 12  # the 4x4 square's border: 16 - 4 inner pixels
