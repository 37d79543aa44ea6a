"""main.EMA, the EMA of the weights with its warm-up, and models.py: the model rebuilt from a checkpoint."""
import pytest
import torch

from ddpm import DDPM, linear_beta_schedule
from main import EMA


def tiny_model():
    return DDPM(torch.nn.Conv2d(1, 1, 1), linear_beta_schedule(10))


def test_ema_warm_up_follows_min_decay_formula():
    """decay_n = min(decay, (1 + n) / (10 + n)): update 0 keeps 1/10 of the old average, update 90
    keeps min(0.999, 91/100) = 0.91, and late updates the full decay."""
    model = tiny_model()
    ema = EMA(model, decay=0.999)
    w = model.net.weight
    start = ema.model.net.weight.clone()
    with torch.no_grad():
        w.add_(1.0)
    ema.update(model)
    assert torch.allclose(ema.model.net.weight, 0.1 * start + 0.9 * w)
    ema.n = 90
    before = ema.model.net.weight.clone()
    ema.update(model)
    assert torch.allclose(ema.model.net.weight, 0.91 * before + 0.09 * w)
    ema.n = 10 ** 6
    before = ema.model.net.weight.clone()
    ema.update(model)
    assert torch.allclose(ema.model.net.weight, 0.999 * before + 0.001 * w)


def test_ema_of_constant_weights_converges_to_them_and_does_not_train():
    model = tiny_model()
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.net.weight.fill_(3.0)
    for _ in range(200):
        ema.update(model)
    assert ema.model.net.weight.item() == pytest.approx(3.0, abs=1e-6)
    assert not any(p.requires_grad for p in ema.model.parameters())


@pytest.mark.parametrize("model, net, schedule", [("DDPM", "unet", "linear"), ("DDGM", "cnn", "cosine"),
                                                  ("COND", "unet", "cosine")])
def test_build_model_follows_the_registries(model, net, schedule):
    """build_model: the process class of the model name, the network of unet.NETWORKS, the beta of
    ddpm.SCHEDULES, and min-SNR from the config."""
    from cond import ConditionalDDPM
    from ddgm import DDGM
    from ddpm import SCHEDULES
    from models import build_model
    from unet import CNN, UNet
    config = {"model": model, "net": net, "schedule": schedule, "n_T": 20, "betas": [1e-4, 0.02],
              "in_channels": 1, "image_size": 16, "num_classes": 3 if model == "COND" else 0, "cond_channels": 0,
              "unet_widths": [8, 8, 8], "theta0": 0.001, "loss": "l2", "p_uncond": 0.1, "guidance": 2.0,
              "min_snr": 0.0 if model == "DDGM" else 5.0}
    built = build_model(config)
    assert type(built) is {"DDPM": DDPM, "DDGM": DDGM, "COND": ConditionalDDPM}[model]
    assert type(built.net) is {"unet": UNet, "cnn": CNN}[net]
    assert torch.allclose(built.beta, SCHEDULES[schedule](20, (1e-4, 0.02)).float())
    assert built.min_snr_gamma == config["min_snr"]


def test_a_checkpoint_with_the_old_level_names_loads_into_the_listed_levels():
    """Before the U-Net's levels were ModuleLists they were attributes down1, attn_down1, pool1, up1, dec1, ...
    (setattr). load_weights maps those names to down.0, ... and the network computes exactly the same."""
    import re

    from plumbing.checkpoints import load_weights
    from unet import UNet
    torch.manual_seed(0)
    new = UNet(1, (8, 8, 8), image_size=16, attention_res=(16,))
    old = {re.sub(r"^(down|attn_down|pool|up|dec|attn_dec)\.(\d+)\.", lambda m: f"{m[1]}{int(m[2]) + 1}.", k): v
           for k, v in new.state_dict().items()}
    assert "down1.conv1.weight" in old and "attn_dec1.qkv.weight" in old and "dec2.conv1.weight" in old
    again = UNet(1, (8, 8, 8), image_size=16, attention_res=(16,))
    load_weights(again, old, "test")
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([3, 7])
    assert torch.equal(again(x, t), new(x, t))


def test_a_config_without_unet_version_builds_the_first_design_and_new_runs_record_the_latest():
    """Checkpoints from before unet_version hold the first design (unet.VERSIONS[1]); the latest design is what
    VERSIONS says (here: AdaGN doubles emb_proj). New runs train it up to 64 px and the first design above and on
    volumes (models.by_size, as measured)."""
    from models import by_size
    from unet import VERSIONS, UNet, unet_from_config
    UNET_VERSION = max(VERSIONS)
    version = lambda side, dims=2: by_size("DDPM", side, dims, epochs=1)["unet_version"]  # noqa: E731
    assert version(28) == version(64) == UNET_VERSION
    assert version(65) == 1 and version(32, 3) == 1
    config = {"in_channels": 1, "image_size": 16, "num_classes": 0, "cond_channels": 0, "unet_widths": [8, 8, 8]}
    old, new = unet_from_config(config), unet_from_config({**config, "unet_version": UNET_VERSION})
    assert old.down[0].emb_proj.out_features == 8 and not old.down[0].scale_shift
    assert new.down[0].scale_shift == VERSIONS[UNET_VERSION].get("scale_shift", False)
    for options in ({}, *VERSIONS.values(), {"skip_every": True, "act": "silu"}):
        weights = UNet(1, (8, 8, 8), image_size=16, **options).state_dict()
        assert UNet.renamed_levels(weights).keys() == weights.keys()  # only old names are renamed


@pytest.mark.slow
def test_unet_version_1_trains_and_resume_keeps_the_runs_own_design(tmp_path):
    """--unet-version 1 trains the first design; --resume without the flag continues in it (config.json says
    so), and asking a run of design 1 to resume as design 2 is refused in one line."""
    import json

    import pytest

    import main
    tiny = ["DDPM", "--dataset", "shapes", "--limit", "32", "--batch-size", "16", "--n-T", "10", "--num-samples",
            "2", "--sample-steps", "2", "--eval-samples", "0", "--unet-widths", "8", "8", "8", "--out", str(tmp_path)]
    main.main([*tiny, "--epochs", "1", "--unet-version", "1"])
    main.main([*tiny, "--epochs", "2", "--resume"])
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["unet_version"] == 1 and torch.load(tmp_path / "model.pth", weights_only=True)["epoch"] == 2
    with pytest.raises(SystemExit) as e:
        main.main([*tiny, "--epochs", "3", "--resume", "--unet-version", "2"])
    assert e.value.code == 2


@pytest.mark.slow
def test_new_runs_on_small_images_take_the_cosine_schedule_and_resume_keeps_the_runs_own(tmp_path):
    """models.by_size: cosine for DDPM and COND on 2D images up to 32 px (measured on MNIST), linear above, on
    volumes, for VPRED and DDGM and when --betas names the linear schedule's ends. A run begun on the linear
    schedule (as every run before this default) continues on it with --resume, as config.json says."""
    import json

    import main
    from models import by_size
    schedule_for = lambda model, side, dims=2: by_size(model, side, dims, epochs=1)["schedule"]  # noqa: E731
    assert schedule_for("DDPM", 28) == schedule_for("COND", 32) == "cosine"
    assert schedule_for("DDPM", 64) == schedule_for("DDPM", 32, 3) == "linear"
    assert schedule_for("VPRED", 28) == schedule_for("DDGM", 28) == "linear"
    tiny = ["DDPM", "--dataset", "shapes", "--limit", "32", "--batch-size", "16", "--n-T", "10", "--num-samples",
            "2", "--sample-steps", "2", "--eval-samples", "0", "--unet-widths", "8", "8", "8", "--epochs", "1"]

    def schedule(name, *extra):
        main.main([*tiny, "--out", str(tmp_path / name), *extra])
        return json.loads((tmp_path / name / "config.json").read_text())["schedule"]
    assert schedule("new") == "cosine" and schedule("betas", "--betas", "1e-4", "0.03") == "linear"
    assert schedule("old", "--schedule", "linear") == "linear"
    assert schedule("old", "--epochs", "2", "--resume") == "linear"
    assert torch.load(tmp_path / "old" / "model.pth", weights_only=True)["epoch"] == 2


@pytest.mark.parametrize("decay", [0.0, 0.5, 1.0])
def test_the_learning_rate_warms_up_then_decays_over_the_last_fraction_of_the_run(decay):
    """main.learning_rate: lr * step / warmup for the first warmup steps (Goyal et al. 2017), then lr, and with
    lr_decay = f a straight line to 0 over the last f of the run's total steps (the last step at lr / (f total))."""
    import main
    config, total = {"lr": 2e-3, "warmup": 100, "lr_decay": decay}, 1000
    lr = [main.learning_rate(config, step, total) for step in range(1, total + 1)]
    assert lr[0] == pytest.approx(2e-5)  # step 1 of 100 warm-up steps
    assert lr[99] == pytest.approx(2e-3 * (min(1.0, 901 / (decay * total)) if decay else 1.0))  # warm: 901 steps left
    if decay:
        assert lr[-1] == pytest.approx(2e-3 / (decay * total)) and all(a >= b for a, b in zip(lr[100:], lr[101:]))
    else:
        assert lr[-1] == 2e-3


def test_the_unet_widens_from_12_epochs_on_up_to_32_px():
    """models.by_size as main.py applies it: 16 32 32 for images up to 32 px in runs of fewer than 12 epochs, 24 48 48
    from 12 on (measured on MNIST, docs/quality.md); given widths, a resumed run's own and larger images keep theirs."""
    import main
    from datatypes import Dataset

    def config(argv, saved=None, side=28):
        return main.for_data(main.recipe(main.build_parser().parse_args(["DDPM", *argv]), saved),
                             Dataset(torch.zeros(4, 1, side, side), None, None))

    def widths(argv, saved=None, side=28):
        return config(argv, saved, side)["unet_widths"]
    assert widths(["--epochs", "11"]) == [16, 32, 32]
    assert widths([]) == widths(["--epochs", "12"]) == [24, 48, 48]  # the default run is 12 epochs
    assert widths(["--epochs", "40", "--unet-widths", "8", "8"]) == [8, 8]
    assert widths(["--epochs", "40"], side=64) == widths(["--epochs", "1"], side=64) == [16, 32, 64, 64]
    six = config(["--epochs", "6"])
    assert widths(["--epochs", "18", "--resume"], saved=six) == [16, 32, 32]  # a resumed run keeps its network


def test_attention_at_a_side_the_unet_does_not_have_is_refused():
    """--attention-res 3 on a 16 px U-Net (maps of 16, 8 and 4 px) trained without attention anywhere it asked."""
    from unet import UNet
    with pytest.raises(ValueError, match="feature maps are 16, 8, 4 px wide"):
        UNet(1, (8, 8, 8), image_size=16, attention_res=(3,))
    assert any("attn_down.1" in k for k in UNet(1, (8, 8, 8), image_size=16, attention_res=(8,)).state_dict())
