"""DDGM (Nachmani et al. 2021): the Gamma closed form against its moments, the recursion, and precision."""
import math

import pytest
import torch

from ddgm import DDGM
from ddpm import DDPM, linear_beta_schedule
from synthetic import make_shapes
from test_ddpm import Recorder, fixed_loss, train_steps
from unet import CNN


def moments(x: torch.Tensor) -> tuple:
    """Mean, variance and standardised skewness E[(x - mu)^3] / sigma^3, in float64."""
    x = x.double().flatten()
    mu, var = x.mean(), x.var()
    return mu.item(), var.item(), (((x - mu) ** 3).mean() / var ** 1.5).item()


@pytest.mark.parametrize("theta_0, i, sides", [(0.001, 299, (1, 1)), (0.5, 199, (1, 1)), (0.5, 29, (1, 1)),
                                               (0.5, 199, (1, 1, 1))])
def test_closed_form_mean_variance_and_skewness(theta_0, i, sides):
    """x_t = sqrt(alpha_bar_t) x0 + (gbar_t - kbar_t theta_t): mean sqrt(alpha_bar_t) x0, variance
    1 - alpha_bar_t, skewness 2 / sqrt(kbar_t) with kbar_t = (1/alpha_bar_t - 1) / theta_0^2.
    theta_0 = 0.5, t = 200: kbar ~ 1.4 (skewness ~ 1.7); t = 30: kbar ~ 0.07 (skewness ~ 7.5).
    Volumes (n, 1, 1, 1, 1) as well as images (n, 1, 1, 1)."""
    model = DDGM(Recorder(), linear_beta_schedule(1000), theta_0=theta_0)
    n = 400_000
    x0 = torch.full((n, 1, *sides), 0.3)
    t = torch.full((n,), i)
    x_t = model.q_sample(x0, t, model.noise_like(x0, t, torch.Generator().manual_seed(0)))
    alpha_bar = model.alpha_bar.double()[i].item()
    k_bar = (1 / alpha_bar - 1) / theta_0 ** 2
    assert model.k_bar[i].item() == pytest.approx(k_bar, rel=1e-6)  # the telescoping sum
    mean, var, skew = moments(x_t)
    assert mean == pytest.approx(math.sqrt(alpha_bar) * 0.3, abs=5 * math.sqrt((1 - alpha_bar) / n))
    assert var == pytest.approx(1 - alpha_bar, rel=0.03)
    expected_skew = 2 / math.sqrt(k_bar)
    if expected_skew < 0.1:   # nearly Gaussian: standard error of the skewness is sqrt(6 / n) ~ 0.004
        assert abs(skew - expected_skew) < 0.02
    else:                     # heavy right tail: sample skewness converges slowly; 10% is clear
        assert skew == pytest.approx(expected_skew, rel=0.1)


def test_noise_at_T_is_not_quantised_for_theta0_1e_3():
    """At t = T with theta_0 = 1e-3 the Gamma mean kbar_T theta_T is ~1.6e5 while the std is ~1.
    Centring in float64 keeps the noise continuous; the float32 route (shown for contrast) collapses
    it to a few hundred values."""
    model = DDGM(Recorder(), linear_beta_schedule(1000), theta_0=1e-3)
    assert model.k_bar[-1].item() * model.theta[-1].item() == pytest.approx(1.6e5, rel=0.05)
    x = torch.zeros(100_000, 1, 1, 1)
    t = torch.full((100_000,), 999)
    eps = model.noise_like(x, t, torch.Generator().manual_seed(0))
    assert eps.dtype == torch.float32
    assert len(eps[:10_000].unique()) > 9_900
    assert eps.std().item() == pytest.approx(1.0, rel=0.01)
    k, theta = model.k_bar[-1].float(), model.theta[-1].float()
    g32 = (torch._standard_gamma(model.k_bar[-1].expand(10_000).contiguous()) * model.theta[-1]).float()
    assert len(((g32 - k * theta) / (k.sqrt() * theta)).unique()) < 2_000


def test_one_step_recursion_agrees_with_closed_form():
    """t forward steps x_t = sqrt(alpha_t) x_{t-1} + (g_t - k_t theta_t) (q_step with the step noise)
    have the closed form's distribution: compare mean, variance and skewness (theta_0 = 0.5)."""
    beta = linear_beta_schedule(20, 1e-3, 0.05)
    model = DDGM(Recorder(), beta, theta_0=0.5)
    n, steps = 300_000, 15
    g = torch.Generator().manual_seed(0)
    x = torch.full((n, 1, 1, 1), 0.2)
    for i in range(steps):
        t = torch.full((n,), i)
        x = model.q_step(x, t, model.noise_like(x, t, g, step=True))
    t = torch.full((n,), steps - 1)
    x0 = torch.full((n, 1, 1, 1), 0.2)
    closed = model.q_sample(x0, t, model.noise_like(x0, t, g))
    (m1, v1, s1), (m2, v2, s2) = moments(x), moments(closed)
    assert m1 == pytest.approx(m2, abs=0.003)
    assert v1 == pytest.approx(v2, rel=0.02)
    assert s1 == pytest.approx(s2, rel=0.1) and s1 > 0.5  # visibly skewed, and equally so


@pytest.mark.parametrize("theta_0", [1e-4, 1e-3, 0.1, 0.5, 1.0])
def test_noise_finite_for_every_t(theta_0):
    """No NaN or infinity for any t in 1..T, in both the closed-form and the one-step draw."""
    model = DDGM(Recorder(), linear_beta_schedule(1000), theta_0=theta_0)
    x = torch.zeros(1000, 1, 4, 4)
    t = torch.arange(1000)
    g = torch.Generator().manual_seed(0)
    for step in (False, True):
        assert torch.isfinite(model.noise_like(x, t, g, step=step)).all()
    assert torch.isfinite(model.x_T_like(x, g)).all()


def test_ddgm_changes_only_the_noise_and_the_loss():
    """The paper's change, and nothing else: of DDPM's methods (its own and process.Process's), DDGM overrides
    just these. Helpers of its own, such as the check that float64 can draw the Gamma noise, are not overrides
    and may be added freely; DDIM is not refused by a method but left out of its samplers."""
    overridden = {k for k, v in vars(DDGM).items() if callable(v) and hasattr(DDPM, k)}
    assert overridden == {"__init__", "noise_like", "x_T_like", "per_image_loss"} and DDGM.samplers == ("ddpm",)


@pytest.mark.slow
def test_training_on_shapes_lowers_the_loss():
    torch.manual_seed(0)
    x = make_shapes(n=512).images
    model = DDGM(CNN(hidden=(8, 16, 8)), linear_beta_schedule(1000), theta_0=0.001)
    before = fixed_loss(model, x[:256])
    train_steps(model, x)
    assert fixed_loss(model, x[:256]) < 0.5 * before


def test_l1_loss_option():
    model = DDGM(Recorder(), linear_beta_schedule(10), loss_type="l1")
    assert model.per_image_loss(torch.zeros(1, 4), torch.tensor([[1.0, -1.0, 2.0, 0.0]])).tolist() == [1.0]
    with pytest.raises(ValueError, match="theta_0"):
        DDGM(Recorder(), linear_beta_schedule(10), theta_0=0.0)


@pytest.mark.parametrize("theta_0", [1e-4, 1e-3, 0.1, 1.0])
def test_sampling_finite_with_right_shape(theta_0):
    torch.manual_seed(0)
    model = DDGM(CNN(hidden=(8, 8)), linear_beta_schedule(50), theta_0=theta_0)
    x = model.sample(4, (1, 8, 8), generator=torch.Generator().manual_seed(0))
    assert x.shape == (4, 1, 8, 8) and torch.isfinite(x).all()
