"""DDIM sampling (Song, Meng & Ermon 2021, eq. 12 and 16) with exact noise predictors of known
data distributions: a correct sampler must return that distribution, whatever its step count."""
import pytest
import torch

from datatypes import DataError
from ddgm import DDGM
from ddpm import DDPM, extract, linear_beta_schedule


class PointMassEps(torch.nn.Module):
    """The exact eps for data x_0 = c: from eq. (4), eps = (x_t - sqrt(alpha_bar_t) c) / sqrt(1 - alpha_bar_t)."""

    def __init__(self, alpha_bar, c):
        super().__init__()
        self.alpha_bar, self.c = alpha_bar, c

    def forward(self, x_t, t, **cond):
        a = extract(self.alpha_bar, t, x_t)
        return (x_t - a.sqrt() * self.c) / (1 - a).sqrt()


class GaussianEps(torch.nn.Module):
    """The exact (MMSE) eps for pixels x_0 ~ N(mu, s^2) independently: x_t ~ N(sqrt(a) mu, a s^2 + 1 - a),
    and E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) mu) / (a s^2 + 1 - a), a = alpha_bar_t."""

    def __init__(self, alpha_bar, mu, s):
        super().__init__()
        self.alpha_bar, self.mu, self.s = alpha_bar, mu, s

    def forward(self, x_t, t, **cond):
        a = extract(self.alpha_bar, t, x_t)
        return (1 - a).sqrt() * (x_t - a.sqrt() * self.mu) / (a * self.s ** 2 + 1 - a)


def model_with(eps_class, *args, T=1000):
    model = DDPM(torch.nn.Identity(), linear_beta_schedule(T))
    model.net = eps_class(model.alpha_bar, *args)
    return model


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("steps", [1, 10, 50])
@pytest.mark.parametrize("sides", [(2, 2), (2, 2, 2)], ids=["images", "volumes"])
def test_ddim_returns_the_point_mass(steps, eta, sides):
    """With the exact eps of x_0 = c, the predicted x_0 of eq. (12) is c at every step, and the last
    step (to alpha_bar_0 = 1, sigma = 0 by eq. 16) returns it: every sample is c, image or volume."""
    c = torch.tensor([-0.5, 0.25, 0.75]).view(1, 3, *[1] * len(sides))
    x = model_with(PointMassEps, c).ddim_sample(16, (3, *sides), steps=steps, eta=eta,
                                                  generator=torch.Generator().manual_seed(0))
    assert x.shape == (16, 3, *sides)
    assert torch.allclose(x, c.expand_as(x), atol=1e-4)


def gaussian_samples(steps, eta, mu=0.3, s=0.5):
    return model_with(GaussianEps, mu, s).ddim_sample(2500, (1, 4, 4), steps=steps, eta=eta,
                                                      generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("steps, eta", [(100, 0.0), (250, 0.0), (1000, 0.0), (500, 1.0), (1000, 1.0)])
def test_ddim_returns_gaussian_pixels(steps, eta):
    """With the exact eps of x_0 ~ N(0.3, 0.5^2), samples have that mean and std within 3 %
    (40,000 pixels: the standard error of the std is 0.5 / sqrt(80,000) ~ 0.002)."""
    x = gaussian_samples(steps, eta)
    assert x.mean().item() == pytest.approx(0.3, abs=0.03 * 0.5)
    assert x.std().item() == pytest.approx(0.5, rel=0.03)


def test_x0_error_of_the_exact_eps_is_the_posterior_variance():
    """bench.noise_levels: with the exact eps of pixels x_0 ~ N(0, s^2), eq. (15)'s x0_hat is E[x_0 | x_t], whose
    mean squared error is the posterior variance s^2 (1 - a) / (a s^2 + 1 - a), a = alpha_bar_t, at every t
    (64,000 pixels: the error of each estimate is about 0.6 %)."""
    from bench.noise_levels import x0_errors
    s = 0.5
    model = model_with(GaussianEps, 0.0, s)
    x0 = s * torch.randn(4000, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    rows = x0_errors(model, x0, (1, 0.9, 0.5, 0.1))
    assert [t for t, _, _ in rows] == [999, 899, 500, 100]
    for t, a, mse in rows:
        assert a == pytest.approx(model.alpha_bar[t].item())
        assert mse == pytest.approx(s ** 2 * (1 - a) / (a * s ** 2 + 1 - a), rel=0.03)


def test_ddim_few_steps_under_disperse_and_converge():
    """Eq. (12) is a discretisation: with few steps the last update returns the posterior mean
    E[x_0 | x_t] from a noisy t, which has less spread than the data (for these Gaussians, at
    10 steps the std is ~0.36, not 0.5). The spread must grow towards 0.5 as steps are added."""
    stds = [gaussian_samples(steps, 0.0).std().item() for steps in (10, 50, 250)]
    assert stds[0] < stds[1] < stds[2] < 0.5 * 1.03 and stds[0] < 0.45


def test_ddim_eta0_is_deterministic_given_x_T_and_eta1_is_not():
    """eta = 0 (eq. 16 gives sigma = 0): the only randomness is x_T, so the same x_T gives the same
    samples; with eta = 1 the step noise z differs between generators seeded alike for x_T only."""
    model = model_with(GaussianEps, 0.3, 0.5, T=50)
    a = model.ddim_sample(4, (1, 3, 3), steps=10, eta=0.0, generator=torch.Generator().manual_seed(3))
    b = model.ddim_sample(4, (1, 3, 3), steps=10, eta=0.0, generator=torch.Generator().manual_seed(3))
    c = model.ddim_sample(4, (1, 3, 3), steps=10, eta=0.0, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    x_T = model.x_T_like(torch.empty(4, 1, 3, 3), torch.Generator().manual_seed(3))
    from_x_T = lambda eta, seed: model.ddim_sample(  # noqa: E731
        4, (1, 3, 3), steps=10, eta=eta, generator=torch.Generator().manual_seed(seed), x_start=x_T,
        t_start=model.T - 1)
    assert torch.equal(from_x_T(0.0, 5), from_x_T(0.0, 6))      # eta = 0: x_T decides everything
    assert not torch.equal(from_x_T(1.0, 5), from_x_T(1.0, 6))  # eta = 1: the step noise z matters
    assert torch.equal(from_x_T(1.0, 5), from_x_T(1.0, 5))


def test_ddim_visits_T_first_and_1_last():
    """Song et al. Sec. 4.2: tau is an increasing sub-sequence of 1..T; ours starts at paper t = T
    (index T - 1) and ends at t = 1 (index 0), each index once."""
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x_t, t, **cond):
            seen.append(int(t[0]))
            return torch.zeros_like(x_t)

    model = DDPM(Spy(), linear_beta_schedule(100))
    model.ddim_sample(2, (1, 2, 2), steps=10)
    assert seen[0] == 99 and seen[-1] == 0 and len(seen) == 10 and seen == sorted(set(seen), reverse=True)
    seen.clear()
    model.ddim_sample(2, (1, 2, 2), steps=100)
    assert seen == list(range(99, -1, -1))


def test_ddim_with_eta1_and_all_steps_is_algorithm_2_with_beta_tilde():
    """With tau = 1..T and eta = 1, eq. (16) gives sigma_t^2 = beta_tilde_t (eq. 7) and eq. (12) is the
    posterior mean: DDIM is then Algorithm 2 with sigma^2 = beta_tilde, step for step."""
    beta = linear_beta_schedule(30)
    ddpm = DDPM(torch.nn.Identity(), beta, sigma2="beta_tilde")
    ddpm.net = GaussianEps(ddpm.alpha_bar, 0.3, 0.5)
    x_ddpm = ddpm.sample(8, (1, 2, 2), generator=torch.Generator().manual_seed(5))
    # same draws in the same order: x_T, then one z per step (DDIM draws z after the network call)
    x_ddim = ddpm.ddim_sample(8, (1, 2, 2), steps=30, eta=1.0, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(x_ddpm, x_ddim, atol=1e-4)


def test_ddim_refused_for_ddgm():
    """DDIM's eq. (12) is derived for Gaussian noise: DDGM names Algorithm 2 as its only sampler."""
    from models import check_sampler
    with pytest.raises(DataError, match="DDGM samples with ddpm only, not ddim: use --sampler ddpm"):
        check_sampler(DDGM(torch.nn.Identity(), linear_beta_schedule(10)), "ddim")
