"""v-prediction (vpred.py, Salimans & Ho 2022) and flow matching (flow.py, Liu et al. 2022; Lipman et al. 2023):
their equations against closed forms (the exact network for a point mass, the path's marginals), DDPM's Euler
sampler against DDIM, and both processes through every script that takes a process, with their refusals."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import anomaly
import main
import sample
from ddpm import DDPM, linear_beta_schedule
from flow import FlowMatching
from models import SAMPLERS
from process import extract
from test_ddim import PointMassEps
from vpred import VPredictionDDPM

T = 100
G = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731


class PointMassV(torch.nn.Module):
    """The exact v for data x_0 = c: v = sqrt(a) eps - sqrt(1 - a) c with eps from eq. (4), a = alpha_bar_t."""

    def __init__(self, alpha_bar, c):
        super().__init__()
        self.alpha_bar, self.c = alpha_bar, c

    def forward(self, x_t, t, **cond):
        a = extract(self.alpha_bar, t, x_t)
        eps = (x_t - a.sqrt() * self.c) / (1 - a).sqrt()
        return a.sqrt() * eps - (1 - a).sqrt() * self.c


class Returns(torch.nn.Module):
    """A network that returns the given tensor, whatever it is asked."""

    def __init__(self, out):
        super().__init__()
        self.out = out

    def forward(self, x_t, t, **cond):
        return self.out


class PointMassVelocity(torch.nn.Module):
    """The exact velocity for data x_0 = c on the straight path: E[eps - x_0 | x_t] = (x_t - c) / t."""

    def __init__(self, T, c):
        super().__init__()
        self.T, self.c = T, c

    def forward(self, x_t, t, **cond):
        return (x_t - self.c) / ((t + 1).float() / self.T).view(-1, 1, 1, 1)


def test_v_target_gives_back_eps_and_x0():
    model = VPredictionDDPM(torch.nn.Identity(), linear_beta_schedule(T))
    x0, eps = torch.rand(6, 1, 4, 4, generator=G(0)) * 2 - 1, torch.randn(6, 1, 4, 4, generator=G(1))
    t = torch.tensor([0, 10, 40, 70, 90, 99])
    x_t, v = model.q_sample(x0, t, eps), model.target(x0, t, eps)
    model.net = Returns(v)  # the network that is exactly right
    eps_hat = model.predict_eps(x_t, t)
    assert torch.allclose(eps_hat, eps, atol=1e-5)
    assert torch.allclose(model.predict_x0(x_t, t, eps_hat), x0, atol=1e-3)


def test_v_min_snr_weight_is_min_snr_on_x0():
    """w_t ||v - v_hat||^2 = min(SNR_t, gamma) ||x_0 - x0_hat||^2 for any error of v_hat (Hang et al. Sec. 3.4)."""
    model = VPredictionDDPM(torch.nn.Identity(), linear_beta_schedule(T), min_snr_gamma=5.0)
    t = torch.arange(0, T, 9)
    x_t, dv = torch.randn(len(t), 1, 4, 4, generator=G(2)), torch.randn(len(t), 1, 4, 4, generator=G(3))
    v = torch.randn(len(t), 1, 4, 4, generator=G(4))
    x0 = lambda v_: model.predict_x0(x_t, t, (1 - extract(model.alpha_bar, t, x_t)).sqrt() * x_t  # noqa: E731
                                     + extract(model.alpha_bar, t, x_t).sqrt() * v_)
    snr = model.alpha_bar[t] / (1 - model.alpha_bar[t])
    lhs = model.min_snr_weight(t) * dv.square().flatten(1).sum(1)
    rhs = snr.clamp(max=5.0) * (x0(v) - x0(v + dv)).square().flatten(1).sum(1)
    assert torch.allclose(lhs, rhs, rtol=1e-3)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "euler"])
def test_v_with_the_exact_network_samples_the_point_mass(sampler):
    model = VPredictionDDPM(torch.nn.Identity(), linear_beta_schedule(T))
    c = torch.linspace(-0.9, 0.9, 16).view(1, 1, 4, 4)
    model.net = PointMassV(model.alpha_bar, c)
    x = SAMPLERS[sampler](model, 3, (1, 4, 4), steps=10, generator=G(5))
    assert torch.allclose(x, c.expand_as(x), atol=1e-3)


def test_ddpm_euler_is_ddim_with_eta_zero():
    model = DDPM(torch.nn.Identity(), linear_beta_schedule(T))
    model.net = PointMassEps(model.alpha_bar, torch.linspace(-1, 1, 16).view(1, 1, 4, 4))
    a = SAMPLERS["euler"](model, 2, (1, 4, 4), steps=7, generator=G(6))
    b = SAMPLERS["ddim"](model, 2, (1, 4, 4), steps=7, eta=0.0, generator=G(6))
    assert torch.equal(a, b)


def test_flow_path_ends_in_the_noise_and_starts_at_the_image():
    model = FlowMatching(torch.nn.Identity(), T)
    x0, eps = torch.rand(2, 1, 4, 4, generator=G(7)), torch.randn(2, 1, 4, 4, generator=G(8))
    assert torch.equal(model.q_sample(x0, torch.full((2,), T - 1), eps), eps)  # t = 1: pure noise
    t = torch.tensor([0, 49])
    s = ((t + 1) / T).view(-1, 1, 1, 1)
    assert torch.allclose(model.q_sample(x0, t, eps), (1 - s) * x0 + s * eps)
    assert torch.equal(model.target(x0, t, eps), eps - x0)


def test_flow_step_up_has_the_path_marginals():
    """q_step from the time of index t - 1 to that of t: mean (1 - t) x_0 and std t, as q_sample's."""
    model = FlowMatching(torch.nn.Identity(), T)
    n, x0 = 200_000, torch.full((200_000, 1, 1, 1), 0.7)
    for i in (0, 30, 98):
        t = torch.full((n,), i)
        x_prev = model.q_sample(x0, t - 1, torch.randn(x0.shape, generator=G(i))) if i else x0
        x = model.q_step(x_prev, t, torch.randn(x0.shape, generator=G(100 + i)))
        s = (i + 1) / T
        assert abs(x.mean().item() - (1 - s) * 0.7) < 4 * s / n ** 0.5 + 1e-6
        assert abs(x.std().item() - s) < 0.01 * s


@pytest.mark.parametrize("steps, clip_x0", [(1, False), (3, False), (T, False), (3, True)])
def test_flow_euler_with_the_exact_velocity_lands_on_the_point_mass(steps, clip_x0):
    """The exact velocity field of a point mass moves every x straight to c, so Euler is exact in any steps
    (and clipping x0_hat, which lies in [-1, 1] here, changes nothing)."""
    model = FlowMatching(torch.nn.Identity(), T, clip_x0=clip_x0)
    c = torch.linspace(-0.9, 0.9, 16).view(1, 1, 4, 4)
    model.net = PointMassVelocity(T, c)
    seen = []
    x = SAMPLERS["euler"](model, 3, (1, 4, 4), steps=steps, generator=G(9), on_step=lambda i, x_t, x0: seen.append(x0))
    assert torch.allclose(x, c.expand_as(x), atol=1e-5)
    assert len(seen) == steps and torch.allclose(seen[0], c.expand_as(x), atol=1e-5)


def test_flow_euler_with_clip_x0_ends_in_range_and_without_it_may_not():
    model = FlowMatching(Returns(torch.zeros(1)), T)
    model.net = PointMassVelocity(T, torch.full((1, 1, 4, 4), 1.5))  # data outside [-1, 1]
    assert SAMPLERS["euler"](model, 2, (1, 4, 4), steps=5, generator=G(12)).max() > 1.4
    model.clip_x0 = True
    x = SAMPLERS["euler"](model, 2, (1, 4, 4), steps=5, generator=G(12))
    assert x.min() >= -1 and x.max() <= 1


def test_flow_inpaint_keeps_known_pixels_and_fills_the_region_with_the_point_mass():
    model = FlowMatching(torch.nn.Identity(), 40)
    c = torch.linspace(-0.8, 0.8, 64).view(1, 1, 8, 8)
    model.net = PointMassVelocity(40, c)
    x0 = torch.rand(2, 1, 8, 8, generator=G(10)) * 2 - 1
    keep = torch.ones(2, 1, 8, 8)
    keep[:, :, 2:6, 3:7] = 0
    x = model.inpaint(x0, keep, jump_length=5, jump_count=3, generator=G(11))
    known = keep.bool().expand_as(x)
    assert torch.equal(x[known], x0[known]) and torch.allclose(x[~known], c.expand_as(x)[~known], atol=1e-4)


TINY = ["--dataset", "shapes", "--net", "cnn", "--limit", "32", "--batch-size", "16", "--n-T", "10",
        "--num-samples", "2", "--sample-steps", "2", "--eval-samples", "0", "--epochs", "1"]


@pytest.mark.slow
@pytest.mark.parametrize("process, sampler, min_snr", [("VPRED", "ddim", 5.0), ("FLOW", "euler", None),
                                                      ("EDM", "heun", None)])
def test_the_new_processes_run_through_every_script(tmp_path, process, sampler, min_snr):
    main.main([process, *TINY, "--out", str(tmp_path / "run")])
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"] == process and config["sampler"] == sampler and config.get("min_snr") == min_snr
    assert (tmp_path / "run" / "schedules.png").exists() == (process == "VPRED")
    checkpoint = str(tmp_path / "run" / "model.pth")
    sample.main([checkpoint, "--num-samples", "2", "--reverse", "--out", str(tmp_path / "s.png")])
    anomaly.main([checkpoint, "--n", "2", "--n-val", "2", "--repeats", "1", "--out", str(tmp_path / "a.png")])
    image = (np.arange(28 * 28).reshape(28, 28) % 200).astype(np.uint8)  # shapes: 28 px
    region = np.zeros((28, 28), np.uint8)
    region[4:10, 5:12] = 255
    Image.fromarray(image).save(tmp_path / "im.png")
    Image.fromarray(region).save(tmp_path / "r.png")
    sample.main([checkpoint, "--inpaint", str(tmp_path / "im.png"), "--region", str(tmp_path / "r.png"),
                 "--jump-length", "5", "--jump-count", "2", "--num-samples", "2", "--out", str(tmp_path / "in.png")])
    x = np.load(tmp_path / "in.npz")["images"]
    outside = region == 0
    assert np.allclose(x[:, 0][:, outside], (image[outside] / 255.0 * 2 - 1)[None], atol=1e-6)
    assert (tmp_path / "s_reverse.png").exists() and (tmp_path / "a.png").exists()


@pytest.mark.parametrize("argv, fragment", [
    (["FLOW", "--sampler", "ddim"], "--sampler must be euler for FLOW"),
    (["FLOW", "--min-snr", "5"], "--min-snr applies to"),
    (["FLOW", "--schedule", "cosine"], "--schedule does not apply to FLOW"),
    (["FLOW", "--betas", "1e-4", "0.03"], "--betas does not apply to FLOW"),
    (["DDGM", "--sampler", "euler"], "--sampler must be ddpm for DDGM"),
])
def test_what_a_process_cannot_take_is_one_line(tmp_path, capsys, argv, fragment):
    with pytest.raises(SystemExit) as e:
        main.main([*argv, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and fragment in err, err


@pytest.mark.slow
def test_a_flow_checkpoint_refuses_ddpm_sampling_in_one_line(tmp_path, capsys):
    main.main(["FLOW", *TINY, "--out", str(tmp_path / "run")])
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        sample.main([str(tmp_path / "run" / "model.pth"), "--sampler", "ddpm", "--out", str(tmp_path / "s.png")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "use --sampler euler" in err, err


@pytest.mark.slow
@pytest.mark.parametrize("process", ["VPRED", "FLOW"])
def test_v_and_flow_take_masks_when_asked_and_are_unconditional_by_default(tmp_path, process):
    phantom = ["--dataset", "phantom", "--image-size", "16", "--unet-widths", "8", "8", "8", *TINY[4:]]
    main.main([process, *phantom, "--out", str(tmp_path / "plain")])
    main.main([process, *phantom, "--cond", "mask", "--out", str(tmp_path / "mask")])
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["cond"] is None
    assert json.loads((tmp_path / "mask" / "config.json").read_text())["cond"] == "mask"
    sample.main([str(tmp_path / "mask" / "model.pth"), "--num-samples", "2", "--out", str(tmp_path / "s.png")])
    assert np.load(tmp_path / "s.npz")["masks"].shape == (2, 1, 16, 16)
