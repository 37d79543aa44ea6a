"""models.py: the EMA of the weights with its warm-up, and the model rebuilt from a checkpoint."""
import pytest
import torch

from ddpm import DDPM, linear_beta_schedule
from models import EMA


def tiny_model():
    return DDPM(torch.nn.Conv2d(1, 1, 1), linear_beta_schedule(10))


def test_ema_warm_up_follows_min_decay_formula():
    """decay_n = min(decay, (1 + n) / (10 + n)): update 0 keeps 1/10 of the old average, update 90
    keeps min(0.999, 91/100) = 0.91, and late updates the full decay."""
    model = tiny_model()
    ema = EMA(model, decay=0.999)
    w = model.eps_model.weight
    start = ema.model.eps_model.weight.clone()
    with torch.no_grad():
        w.add_(1.0)
    ema.update(model)
    assert torch.allclose(ema.model.eps_model.weight, 0.1 * start + 0.9 * w)
    ema.n = 90
    before = ema.model.eps_model.weight.clone()
    ema.update(model)
    assert torch.allclose(ema.model.eps_model.weight, 0.91 * before + 0.09 * w)
    ema.n = 10 ** 6
    before = ema.model.eps_model.weight.clone()
    ema.update(model)
    assert torch.allclose(ema.model.eps_model.weight, 0.999 * before + 0.001 * w)


def test_ema_of_constant_weights_converges_to_them_and_does_not_train():
    model = tiny_model()
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.eps_model.weight.fill_(3.0)
    for _ in range(200):
        ema.update(model)
    assert ema.model.eps_model.weight.item() == pytest.approx(3.0, abs=1e-6)
    assert not any(p.requires_grad for p in ema.model.parameters())
