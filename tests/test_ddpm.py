"""DDPM (Ho et al. 2020) against closed forms, hand computations and statistics."""
import math

import pytest
import torch
import torch.nn.functional as F

from ddpm import DDPM, cosine_beta_schedule, linear_beta_schedule
from synthetic import make_shapes
from unet import CNN


class Recorder(torch.nn.Module):
    """A stand-in net that predicts zeros and remembers the timesteps it was given."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x_t, t, **cond):
        self.seen.append(t.clone())
        return torch.zeros_like(x_t)


def test_linear_schedule_endpoints_and_alpha_bar_T():
    """Ho et al. Sec. 4: beta from 1e-4 to 0.02 over T = 1000; alpha_bar_T = prod(1 - beta_t).
    log alpha_bar_T ~ -sum beta - sum beta^2 / 2 = -10.05 - 0.068 -> alpha_bar_T ~ 4.0e-5."""
    beta = linear_beta_schedule(1000)
    assert beta.shape == (1000,)
    assert beta[0].item() == pytest.approx(1e-4) and beta[-1].item() == pytest.approx(0.02)
    assert (beta[1:] > beta[:-1]).all()
    by_hand = math.prod(1 - (1e-4 + (0.02 - 1e-4) * i / 999) for i in range(1000))
    model = DDPM(Recorder(), beta)
    assert model.alpha_bar[-1].item() == pytest.approx(by_hand, rel=1e-4)
    assert 3.9e-5 < by_hand < 4.1e-5


def test_cosine_schedule_matches_eq17():
    """Nichol & Dhariwal eq. (17): alpha_bar_t = f(t) / f(0), f(t) = cos^2(pi/2 (t/T + s)/(1 + s))."""
    T, s = 100, 0.008
    beta = cosine_beta_schedule(T, s)
    assert beta.shape == (T,) and (beta > 0).all() and (beta <= 0.999).all()
    assert (beta[1:] >= beta[:-1]).all()
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    alpha_bar = torch.cumprod(1 - beta, 0)
    for t in (1, 10, 50, 90):  # index t - 1 holds paper step t; unclipped here
        assert alpha_bar[t - 1].item() == pytest.approx(f(t) / f(0), rel=1e-9)
    assert beta[-1].item() == 0.999  # the last step is clipped


def test_index_i_is_paper_timestep_i_plus_1():
    """The convention stated in ddpm.py: index 0 is t = 1, so alpha_bar[0] = alpha_1 = 1 - beta_1,
    and q_sample at index 0 mixes with sqrt(1 - beta_1)."""
    beta = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    model = DDPM(Recorder(), beta)
    assert model.alpha_bar.tolist() == pytest.approx([0.9, 0.72, 0.504])
    x0, eps = torch.ones(1, 1, 1, 1), torch.zeros(1, 1, 1, 1)
    assert model.q_sample(x0, torch.tensor([0]), eps).item() == pytest.approx(math.sqrt(0.9))


def test_training_timesteps_cover_1_to_T():
    """Alg. 1 line 3: t ~ Uniform({1, ..., T}), i.e. indices 0..T-1, both ends included."""
    net = Recorder()
    model = DDPM(net, linear_beta_schedule(10))
    torch.manual_seed(0)
    for _ in range(20):
        model.loss(torch.zeros(16, 1, 2, 2))
    seen = torch.cat(net.seen)
    assert seen.min().item() == 0 and seen.max().item() == 9
    assert len(seen.unique()) == 10


VOLUMES = pytest.mark.parametrize("sides", [(1, 1), (1, 1, 1)], ids=["images", "volumes"])


@VOLUMES
def test_q_sample_moments_match_eq4(sides):
    """Eq. (4): q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I). Over n = 200,000
    draws the standard error of the mean is sqrt((1 - alpha_bar) / n) < 0.0023; allow 5 of them.
    Images (n, 1, 1, 1) and volumes (n, 1, 1, 1, 1) alike: the schedule broadcasts by the rank of x."""
    model = DDPM(Recorder(), linear_beta_schedule(1000))
    n, i = 200_000, 299
    x0 = torch.full((n, 1, *sides), 0.7)
    t = torch.full((n,), i)
    torch.manual_seed(0)
    x_t = model.q_sample(x0, t, model.noise_like(x0, t))
    alpha_bar = model.alpha_bar[i].item()
    se = math.sqrt((1 - alpha_bar) / n)
    assert abs(x_t.mean().item() - math.sqrt(alpha_bar) * 0.7) < 5 * se
    assert x_t.var().item() == pytest.approx(1 - alpha_bar, rel=0.01)


def test_q_step_recursion_matches_closed_form():
    """Eq. (2) applied t times gives eq. (4): mean sqrt(alpha_bar_t) x0, variance 1 - alpha_bar_t."""
    model = DDPM(Recorder(), linear_beta_schedule(50, 1e-3, 0.1))
    n = 100_000
    x = torch.full((n, 1, 1, 1), -0.5)
    torch.manual_seed(1)
    for i in range(30):
        t = torch.full((n,), i)
        x = model.q_step(x, t, model.noise_like(x, t, step=True))
    alpha_bar = model.alpha_bar[29].item()
    assert x.mean().item() == pytest.approx(-0.5 * math.sqrt(alpha_bar), abs=5 * math.sqrt((1 - alpha_bar) / n))
    assert x.var().item() == pytest.approx(1 - alpha_bar, rel=0.015)


@VOLUMES
def test_p_sample_step_matches_algorithm2_line4_by_hand(sides):
    """Alg. 2 line 4 with beta = (0.1, 0.2, 0.3), x_t = 1, eps_hat = 0.5, z = 2:
    t = 3 (index 2): alpha = 0.7, alpha_bar = 0.504,
      (1 - 0.3 / sqrt(0.496) * 0.5) / sqrt(0.7) + sqrt(0.3) * 2 = 0.940665 + 1.095445 = 2.036110;
    t = 1 (index 0): z ignored, (1 - 0.1 / sqrt(0.1) * 0.5) / sqrt(0.9) = 0.887426;
    sigma^2 = beta_tilde (eq. 7) at t = 3: (1 - 0.72) / (1 - 0.504) * 0.3 = 0.169355."""
    beta = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    x_t, eps_hat, z = torch.ones(2, 1, *sides), torch.full((2, 1, *sides), 0.5), torch.full((2, 1, *sides), 2.0)
    t = torch.tensor([2, 0])
    out = DDPM(Recorder(), beta).p_sample_step(x_t, t, eps_hat, z).flatten().tolist()
    assert out == pytest.approx([2.036110, 0.887426], abs=1e-5)
    tilde = DDPM(Recorder(), beta, sigma2="beta_tilde")
    assert tilde.sigma2[2].item() == pytest.approx(0.169355, abs=1e-6)
    assert tilde.sigma2[0].item() == 0.0  # beta_tilde_1 = 0: alpha_bar_0 = 1
    expected = 0.940665 + math.sqrt(0.169355) * 2
    assert tilde.p_sample_step(x_t, t, eps_hat, z)[0].item() == pytest.approx(expected, abs=1e-5)


def test_clip_eps_gives_the_eq7_posterior_mean_of_the_clipped_x0():
    """beta = (0.1, 0.2, 0.3), t = 3, x_t = 3, eps_hat = 0: eq. (15) gives x0 = 3 / sqrt(0.504) = 4.23,
    clipped to 1; eq. (7): mu_tilde = sqrt(0.72) 0.3 / 0.496 * 1 + sqrt(0.7) 0.28 / 0.496 * 3
    = 0.513223 + 1.416924 = 1.930147, which line 4 must reproduce with the returned eps."""
    model = DDPM(Recorder(), torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64), clip_x0=True)
    x_t, t = torch.full((1, 1, 1, 1), 3.0), torch.tensor([2])
    eps = model.clip_eps(x_t, t, torch.zeros_like(x_t))
    assert eps.item() == pytest.approx((3 - math.sqrt(0.504)) / math.sqrt(0.496), abs=1e-5)
    assert model.p_sample_step(x_t, t, eps, torch.zeros_like(x_t)).item() == pytest.approx(1.930147, abs=1e-5)
    inside = torch.full((1, 1, 1, 1), 0.5)  # x0 = 0.5 / sqrt(0.504) = 0.70 is inside [-1, 1]: unchanged
    assert torch.allclose(model.clip_eps(inside, t, torch.zeros_like(inside)), torch.zeros_like(inside), atol=1e-6)


def draws(model, x0, seed: int) -> dict:
    """Alg. 1's t and eps for x0 from a seed (DDPM.draws), without touching the global generator's state."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return model.draws(x0)


def fixed_loss(model, x0, seed=0):
    """Alg. 1's loss on a fixed batch with fixed t and eps, so before/after compare like with like."""
    with torch.no_grad():
        return model.loss(x0, **draws(model, x0, seed)).item()


def train_steps(model, x, steps=150, batch=32, lr=2e-3):
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = model.loss(x[torch.randint(0, len(x), (batch,))])
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.slow
def test_training_on_shapes_lowers_the_loss():
    """Alg. 1 on the synthetic shapes: 150 Adam steps at least halve the eps-MSE on a held batch
    (an untrained network predicts eps poorly: loss about 1)."""
    torch.manual_seed(0)
    x = make_shapes(n=512).images
    model = DDPM(CNN(hidden=(8, 16, 8)), linear_beta_schedule(1000))
    before = fixed_loss(model, x[:256])
    train_steps(model, x)
    after = fixed_loss(model, x[:256])
    assert before > 0.5 and after < 0.5 * before


def test_min_snr_weight_is_min_snr_gamma_over_snr():
    """Hang et al. Sec. 3.4: w_t = min(SNR(t), gamma) / SNR(t), SNR(t) = alpha_bar_t / (1 - alpha_bar_t):
    1 where SNR <= gamma (noisy steps), gamma / SNR below that; a huge gamma gives back L_simple exactly."""
    model = DDPM(CNN(hidden=(8, 16, 8)), linear_beta_schedule(1000))
    model.min_snr_gamma = 5.0
    t = torch.arange(1000)
    ab = model.alpha_bar.double()
    snr = ab / (1 - ab)
    expected = torch.where(snr > 5, 5 / snr, torch.ones_like(snr))
    assert torch.allclose(model.min_snr_weight(t).double(), expected, rtol=1e-5)
    assert model.min_snr_weight(torch.tensor([0]))[0] == pytest.approx(5 * 1e-4 / (1 - 1e-4), rel=1e-3)
    x = make_shapes(n=16).images
    losses = []
    for gamma in (0.0, 1e30, 5.0):
        model.min_snr_gamma = gamma
        losses.append(model.loss(x, **draws(model, x, 3)).item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-6) and losses[2] < losses[0]


def test_sample_shape_finite_and_reproducible():
    """Alg. 2 from x_T ~ N(0, I): right shape, finite, same output for the same seeded generator; on_step
    sees every index T - 1, ..., 0 with x_t and eq. (15)'s x0_hat."""
    torch.manual_seed(0)
    model = DDPM(CNN(hidden=(8, 8)), linear_beta_schedule(20))
    draw = lambda seed: model.sample(3, (1, 8, 8), generator=torch.Generator().manual_seed(seed))  # noqa: E731
    a, b, c = draw(1), draw(1), draw(2)
    assert a.shape == (3, 1, 8, 8) and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)
    kept = []
    x0 = model.sample(2, (1, 8, 8), generator=torch.Generator().manual_seed(1),
                      on_step=lambda i, x_t, x0_hat: kept.append((i, x_t, x0_hat)))
    # watching every step does not change the draws:
    assert torch.equal(x0, model.sample(2, (1, 8, 8), generator=torch.Generator().manual_seed(1)))
    assert [i for i, _, _ in kept] == list(range(19, -1, -1)) and all(x_t.shape == (2, 1, 8, 8) for _, x_t, _ in kept)
    i, x_t, x0_hat = kept[-1]  # at paper t = 1: x0_hat by eq. (15) from the recorded x_t
    eps_hat = model.net(x_t, torch.zeros(2, dtype=torch.long))
    assert torch.allclose(x0_hat, model.predict_x0(x_t, torch.zeros(2, dtype=torch.long), eps_hat))


def test_bad_schedule_is_refused():
    with pytest.raises(ValueError, match="beta"):
        DDPM(Recorder(), torch.tensor([0.1, 1.5]))
    with pytest.raises(ValueError, match="sigma2"):
        DDPM(Recorder(), linear_beta_schedule(10), sigma2="big")


class HalfLoss(DDPM):
    """A student's own loss: half of L_simple. min-SNR must weight it, not bypass it."""

    def per_image_loss(self, eps_hat, eps):
        return 0.5 * super().per_image_loss(eps_hat, eps)


@pytest.mark.parametrize("gamma", [0.0, 5.0])
def test_a_subclass_loss_is_honoured_with_and_without_min_snr(gamma):
    """loss() = mean_b w_b * per_image_loss_b: a subclass's per_image_loss goes through min-SNR's weights too."""
    torch.manual_seed(0)
    net = CNN(hidden=(8, 8))
    x = make_shapes(n=8).images
    plain, half = (cls(net, linear_beta_schedule(100), min_snr_gamma=gamma) for cls in (DDPM, HalfLoss))
    a, b = (m.loss(x, **draws(m, x, 1)).item() for m in (plain, half))
    assert b == pytest.approx(0.5 * a, rel=1e-6)


def test_l_simple_is_the_mean_over_all_pixels():
    """Per-image means, averaged over the batch, are eq. (14)'s mean over every pixel (equal-sized images)."""
    model = DDPM(CNN(hidden=(8, 8)), linear_beta_schedule(100))
    eps_hat, eps = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    assert model.per_image_loss(eps_hat, eps).mean().item() == pytest.approx(F.mse_loss(eps_hat, eps).item(), rel=1e-6)
