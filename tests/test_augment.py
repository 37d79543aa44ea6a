"""--augment (data.augment): one random flip, shift and rotation per image, applied alike to the
image and its mask; outside the image the background is black (-1) and the mask empty."""
import torch

from data import augment


def disc(n=8, size=32):
    """Images (n, 1, size, size): a bright disc (1) off centre on black (-1), and its mask."""
    c = torch.arange(size) + 0.5
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    inside = ((xx - 0.35 * size) ** 2 + (yy - 0.45 * size) ** 2 <= (0.2 * size) ** 2).float()
    mask = inside.expand(n, 1, size, size).clone()
    return mask * 2 - 1, mask


def test_flips_alone_give_the_image_or_its_mirror_and_the_mask_follows():
    torch.manual_seed(0)
    x, m = disc()
    xa, ma = augment(x, m, max_shift=0.0, max_degrees=0.0)
    for i in range(len(x)):
        flipped = torch.equal(xa[i], x[i].flip(-1))
        assert flipped or torch.allclose(xa[i], x[i], atol=1e-6)
        assert torch.equal(ma[i], m[i].flip(-1) if flipped else m[i])
    assert 0 < sum(torch.equal(xa[i], x[i].flip(-1)) for i in range(len(x))) < len(x)  # both occur


def test_shifts_and_rotations_move_image_and_mask_together():
    """The augmented mask is where the augmented image is bright (up to the bilinear edge)."""
    torch.manual_seed(1)
    x, m = disc()
    xa, ma = augment(x, m)
    agree = ((xa > 0).float() == ma).float().mean().item()
    assert agree > 0.98 and not torch.equal(ma, m)
    assert set(ma.unique().tolist()) <= {0.0, 1.0}


def test_the_background_is_black_and_no_mask_needed():
    torch.manual_seed(2)
    black = -torch.ones(4, 1, 16, 16)
    xa, ma = augment(black)
    assert ma is None and torch.equal(xa, black)
