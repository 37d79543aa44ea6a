"""The README's "how to extend" recipes, performed exactly as written there: each defines a new schedule,
network, dataset, sampler or process, registers it with one line, then runs it through every script that
takes one: it trains through main.main and samples through sample.py; a sampler also draws the reverse
process (sample.py --reverse) and the anomaly maps (anomaly.py, from a given x_t); a process also samples
with --reverse and maps anomalies. If a recipe goes stale, its test fails. Also: the names catalog.py reads
from the source text are the registries' own."""
import json

import pytest
import torch
from torch import nn

import anomaly
import data
import ddpm
import main
import models
import sample
import unet
from datatypes import Dataset
from ddpm import DDPM
from plumbing import catalog

TINY = ["--limit", "32", "--batch-size", "16", "--n-T", "10", "--num-samples", "2", "--sample-steps", "2",
        "--eval-samples", "0", "--epochs", "1"]


def train_and_sample(tmp_path, *args):
    """Train through main.py, then sample (with the reverse process) and map anomalies from the checkpoint."""
    main.main(["DDPM", *TINY, *args, "--out", str(tmp_path / "run")])
    checkpoint = str(tmp_path / "run" / "model.pth")
    sample.main([checkpoint, "--num-samples", "2", "--reverse", "--out", str(tmp_path / "s.png")])
    anomaly.main([checkpoint, "--n", "2", "--n-val", "2", "--repeats", "1", "--out", str(tmp_path / "a.png")])
    assert (tmp_path / "s.png").exists() and (tmp_path / "s_reverse.png").exists() and (tmp_path / "a.png").exists()
    return json.loads((tmp_path / "run" / "config.json").read_text())


def test_extend_schedule(tmp_path, monkeypatch):
    def quadratic_beta_schedule(T, beta_1=1e-4, beta_T=0.02):
        """beta_t quadratic in t from beta_1 to beta_T (as in Ho et al.'s released code)."""
        return torch.linspace(beta_1 ** 0.5, beta_T ** 0.5, T, dtype=torch.float64) ** 2

    monkeypatch.setitem(ddpm.SCHEDULES, "quadratic", lambda T, betas: quadratic_beta_schedule(T, *betas))
    config = train_and_sample(tmp_path, "--dataset", "shapes", "--net", "cnn", "--schedule", "quadratic")
    assert config["schedule"] == "quadratic"


def test_extend_network(tmp_path, monkeypatch):
    class TinyNet(nn.Module):
        """eps_theta(x_t, t): two 3x3 convolutions and the timestep as an extra input channel."""

        def __init__(self, in_channels: int):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(in_channels + 1, 16, 3, padding=1), nn.GELU(),
                                      nn.Conv2d(16, in_channels, 3, padding=1))

        def forward(self, x_t, t, **cond):
            time = (t.float() / 1000).view(-1, 1, 1, 1).expand(-1, 1, *x_t.shape[2:])
            return self.body(torch.cat([x_t, time], dim=1))

    monkeypatch.setitem(unet.NETWORKS, "tiny", lambda config: TinyNet(config["in_channels"]))
    config = train_and_sample(tmp_path, "--dataset", "shapes", "--net", "tiny")
    assert config["net"] == "tiny"


def test_extend_dataset(tmp_path, monkeypatch):
    def read_stripes(train, image_size, **_):
        """Vertical stripes of random width: images (N, 1, H, W) in [-1, 1], no labels, no masks."""
        g = torch.Generator().manual_seed(0 if train else 1)
        period = torch.randint(2, 8, (64, 1, 1, 1), generator=g)
        x = torch.arange(image_size).view(1, 1, 1, -1) // period % 2
        return Dataset(x.expand(-1, 1, image_size, -1).float() * 2 - 1, None, None)

    monkeypatch.setitem(data.DATASETS, "stripes", data.DatasetInfo(read_stripes, size=16))
    config = train_and_sample(tmp_path, "--dataset", "stripes", "--net", "cnn")
    assert config["dataset"] == "stripes" and config["image_size"] == 16


def test_extend_sampler(tmp_path, monkeypatch):
    calls = []

    @torch.no_grad()
    def one_step(model, n, shape, *, steps, eta, generator, x_start=None, t_start=None, on_step=None, **cond):
        """x_0 in one jump from x_T (or from the given x_t): eq. (15) applied once (a poor sampler, but a sampler)."""
        i = model.T - 1 if t_start is None else t_start
        x_t = torch.randn((n, *shape), generator=generator, device=model.beta.device) if x_start is None else x_start
        t = torch.full((n,), i, device=x_t.device, dtype=torch.long)
        x0_hat = model.predict_x0(x_t, t, model.predict_eps(x_t, t, **cond)).clamp(-1, 1)
        if on_step is not None:
            on_step(i, x_t, x0_hat)
        calls.append((x_start is not None, t_start))
        return x0_hat

    monkeypatch.setitem(ddpm.SAMPLERS, "one-step", one_step)
    config = train_and_sample(tmp_path, "--dataset", "shapes", "--net", "cnn", "--sampler", "one-step")
    assert config["sampler"] == "one-step" and calls[0] == (False, None)  # main.py's per-epoch grid
    anomaly.main([str(tmp_path / "run" / "model.pth"), "--sampler", "one-step", "--t-lambda", "4", "--n", "2",
                  "--n-val", "2", "--repeats", "1", "--out", str(tmp_path / "b.png")])
    assert calls[-1] == (True, 3)  # anomaly.py starts it from x_t at paper time 4 (index 3)


class HuberDDPM(DDPM):
    """DDPM trained with the Huber loss on the noise (smooth L1; Girshick 2015), a change of eq. (14) only."""
    options = ()  # no min-SNR weighting

    @classmethod
    def from_config(cls, eps_model, beta, config):
        return cls(eps_model, beta, clip_x0=config.get("clip_x0", False))

    def eps_loss(self, eps_hat, eps):
        return torch.nn.functional.smooth_l1_loss(eps_hat, eps, reduction="none").flatten(1).mean(1)


def test_extend_process(tmp_path, monkeypatch):
    monkeypatch.setitem(models.PROCESSES, "HUBER", HuberDDPM)
    main.main(["HUBER", *TINY, "--dataset", "shapes", "--net", "cnn", "--out", str(tmp_path / "run")])
    checkpoint = str(tmp_path / "run" / "model.pth")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"] == "HUBER" and config["min_snr"] == 0.0  # the recipe's min-SNR is DDPM's, not HUBER's
    sample.main([checkpoint, "--num-samples", "2", "--reverse", "--out", str(tmp_path / "s.png")])
    anomaly.main([checkpoint, "--t-lambda", "4", "--n", "2", "--n-val", "2", "--repeats", "1", "--out",
                  str(tmp_path / "a.png")])
    assert (tmp_path / "s_reverse.png").exists() and (tmp_path / "a.png").exists()
    assert type(models.model_from_checkpoint(torch.load(checkpoint, weights_only=True), "cpu")) is HuberDDPM


@pytest.mark.parametrize("key", sorted(catalog.REGISTRIES))
def test_catalog_reads_the_registries_own_names(key):
    module, registry = catalog.REGISTRIES[key]
    assert catalog.registered(module, registry) == tuple(getattr(__import__(module), registry))


def test_an_unknown_name_is_one_line_listing_the_known_ones(capsys):
    with pytest.raises(SystemExit) as e:
        main.main(["DDPM", "--schedule", "quadratic"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "one of linear, cosine" in err
