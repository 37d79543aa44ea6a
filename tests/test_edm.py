"""EDM (edm.py, Karras et al. 2022) against closed forms. For zero-mean Gaussian data of std sigma_data the ideal
denoiser is D(x; sigma) = x sigma_data^2 / (sigma^2 + sigma_data^2), which is c_skip x: the preconditioning of
Table 1 makes it the network output F = 0. With it, eq. (8)'s loss is 1 at every sigma in expectation (lambda
c_out^2 = 1 times the posterior variance over c_out^2), and Heun's sampler (Algorithm 1) carries N(0, sigma_max^2)
to samples of std sigma_data."""
import math

import pytest
import torch
from torch import nn

from edm import EDM, P_MEAN, P_STD, RHO, SIGMA_DATA, SIGMA_MAX, SIGMA_MIN, karras_sigmas


class Zero(nn.Module):
    """F = 0: with EDM's c_skip, the ideal denoiser of N(0, sigma_data^2) data."""

    def forward(self, x, t, **cond):
        return torch.zeros_like(x)


def test_eq5_sigmas_run_from_sigma_max_to_sigma_min_evenly_in_sigma_to_the_one_over_rho():
    s = karras_sigmas(18)
    assert s[0].item() == pytest.approx(SIGMA_MAX) and s[-1].item() == pytest.approx(SIGMA_MIN)
    steps = s ** (1 / RHO)
    assert torch.allclose(steps[1:] - steps[:-1], (steps[1] - steps[0]).expand(17), rtol=1e-9)
    grid = EDM(Zero(), 1000).sigma  # the repo's grid: index 0 the least noise
    assert grid[0].item() == pytest.approx(SIGMA_MIN) and grid[-1].item() == pytest.approx(SIGMA_MAX, rel=1e-6)


@pytest.mark.parametrize("sigma", [0.002, 0.1, 0.5, 3.0, 80.0])
def test_a_zero_network_is_the_ideal_denoiser_of_gaussian_data(sigma):
    """Eq. (7) with Table 1: D(x; sigma) = c_skip x + c_out F = x sigma_data^2 / (sigma^2 + sigma_data^2) for F = 0."""
    x = torch.randn(4, 1, 3, 3)
    D = EDM(Zero(), 100).denoise(x, torch.full((4, 1, 1, 1), sigma))
    assert torch.allclose(D, x * SIGMA_DATA ** 2 / (sigma ** 2 + SIGMA_DATA ** 2))


@pytest.mark.parametrize("sigma", [0.01, 0.5, 20.0])
def test_the_loss_of_the_ideal_denoiser_is_one_at_every_sigma(sigma):
    """Eq. (8) with lambda = 1 / c_out^2: the ideal denoiser's error, (sigma sigma_data)^2 / (sigma^2 + sigma_data^2)
    per pixel, weighted by lambda, is 1 in expectation (200k pixels: within 1.5 %)."""
    torch.manual_seed(0)
    y = SIGMA_DATA * torch.randn(2000, 1, 10, 10)
    loss = EDM(Zero(), 100).loss(y, sigma=torch.full((2000, 1, 1, 1), sigma), eps=torch.randn_like(y))
    assert loss.item() == pytest.approx(1.0, rel=0.015)


def test_training_sigmas_are_table_1s_log_normal():
    torch.manual_seed(1)
    log_sigma = EDM(Zero(), 100).draws(torch.zeros(200_000, 1, 1, 1))["sigma"].log()
    assert log_sigma.mean().item() == pytest.approx(P_MEAN, abs=0.01)
    assert log_sigma.std().item() == pytest.approx(P_STD, abs=0.01)


@pytest.mark.parametrize("steps, tolerance", [(50, 0.02), (200, 0.01)])
def test_heun_with_the_ideal_denoiser_returns_samples_of_the_datas_std(steps, tolerance):
    """Algorithm 1 from N(0, 80^2) with D = c_skip x: the ODE dx/dsigma = x sigma / (sigma^2 + sigma_data^2) scales x
    by sigma_data / sqrt(sigma_max^2 + sigma_data^2), so x_0 has std sigma_data = 0.5 and mean 0 (40k values).
    Heun's own error for this ODE, computed in float64: std 0.5276 in 18 steps, 0.5030 in 50, 0.5002 in 200."""
    x = EDM(Zero(), 1000).heun_sample(10_000, (1, 2, 2), steps=steps, generator=torch.Generator().manual_seed(2))
    assert x.std().item() == pytest.approx(SIGMA_DATA, rel=tolerance) and abs(x.mean().item()) < 0.01


def test_the_sampler_visits_eq5s_sigmas_for_its_number_of_steps():
    """18 levels of the 1000-level grid are eq. (5) for N = 18, within the grid's rounding (2 %)."""
    model, seen = EDM(Zero(), 1000), []
    model.heun_sample(2, (1, 2, 2), steps=18, on_step=lambda i, x, x0: seen.append(model.sigma[i].item()))
    assert seen == pytest.approx(karras_sigmas(18).tolist(), rel=0.02)


def test_one_euler_step_to_zero_is_the_denoised_estimate():
    """Algorithm 1's last step (sigma_{N} = 0) is Euler's: x + (0 - sigma) (x - D) / sigma = D."""
    model = EDM(Zero(), 10)
    x = torch.randn(3, 1, 2, 2)
    t = torch.zeros(3, dtype=torch.long)
    assert torch.allclose(model.reverse_step(x, t), model.denoise(x, model.sigma[t].view(-1, 1, 1, 1)), atol=1e-6)
    assert math.isclose(model.sigma[0].item(), SIGMA_MIN, rel_tol=1e-6)
