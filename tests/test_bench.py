"""bench.py end to end at its smallest: it runs and writes every promised figure (no time is asserted)."""
import json

import pytest

from bench import bench

pytestmark = pytest.mark.slow  # end to end: the scripts on tiny runs


def test_quick_bench_writes_a_row_per_network(tmp_path, capsys):
    bench.main(["--quick", "--steps", "1", "--out", str(tmp_path / "bench.json")])
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["machine"]["matmul_gflops"]["fp32"] > 0
    names = {row["network"] for row in result["networks"]}
    assert {"CNN (coursework)", "UNet (32, 64, 64)"} <= names
    for row in result["networks"]:
        assert row["flops_per_image"] > 0 and row["img_per_s_fp32"] > 0 and row["ms_per_sampling_step_64"] > 0
    assert "img/s fp32" in capsys.readouterr().out


def test_zero_steps_is_refused_not_replaced(capsys):
    import pytest
    with pytest.raises(SystemExit) as e:
        bench.main(["--steps", "0"])
    assert e.value.code == 2 and "--steps must lie in 1..1000" in capsys.readouterr().err


def test_bad_device_and_missing_mnist_are_one_line(tmp_path, capsys):
    import pytest
    cases = ((["--device", "foo"], "is not a device"), (["--quality", "--data-dir", str(tmp_path)], "MNIST"))
    for args, message in cases:
        with pytest.raises(SystemExit) as e:
            bench.main(["--quick", "--steps", "1", "--out", str(tmp_path / "b.json"), *args])
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_every_ablation_row_builds_a_unet_that_runs():
    """bench/ablate.py's rows (a measurement, needs MNIST): each row's U-Net options build and run a step."""
    import torch

    from bench import ablate
    from models import PROCESSES, SAMPLERS
    from unet import UNet
    for table in ablate.TABLES.values():
        for name, (options, recipe) in table.items():
            net = UNet(1, (8, 8, 8), image_size=28, **options)
            assert net(torch.randn(2, 1, 28, 28), torch.tensor([0, 999])).shape == (2, 1, 28, 28), name
            assert set(recipe) <= {"lr", "ema_decay", "warmup", "min_snr", "model", "eta", "sampler"}, name
            process = PROCESSES[recipe.get("model", "DDPM")]
            assert recipe.get("sampler", process.samplers[0]) in set(SAMPLERS) & set(process.samplers), name


def test_time_to_a_fid_is_interpolated_between_the_scores_around_it():
    from bench.peers import seconds_to
    trace = [{"train_seconds": 10.0, "fid": 40.0}, {"train_seconds": 20.0, "fid": 30.0},
             {"train_seconds": 30.0, "fid": 20.0}]
    assert seconds_to(trace, 25.0) == pytest.approx(25.0)  # halfway from fid 30 at 20 s to fid 20 at 30 s
    assert seconds_to(trace, 45.0) == 10.0  # reached at the first score: no earlier score to interpolate from
    assert seconds_to(trace, 19.0) is None


def test_noise_levels_prints_a_row_per_level_and_refuses_a_process_without_alpha_bar(tmp_path, capsys):
    import main
    from bench import noise_levels
    tiny = ["--dataset", "phantom-healthy", "--image-size", "16", "--limit", "32", "--n-T", "40", "--batch-size", "32",
            "--epochs", "1", "--eval-samples", "0", "--num-samples", "4"]
    main.main(["DDPM", *tiny, "--out", str(tmp_path / "ddpm")])
    main.main(["FLOW", *tiny, "--out", str(tmp_path / "flow")])
    capsys.readouterr()
    noise_levels.main([str(tmp_path / "ddpm" / "model.pth"), "--n", "8"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [int(r.split("|")[1]) for r in rows] == [39, 37, 35, 31, 23, 16, 8, 2]  # round(f * (T - 1)), T = 40
    with pytest.raises(SystemExit) as e:
        noise_levels.main([str(tmp_path / "flow" / "model.pth")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "only processes on a beta schedule" in err
    for bad, message in ((["--n", "0"], "--n must lie in 1..10000"), (["--seed", "-1"], "--seed must lie in 0..")):
        with pytest.raises(SystemExit) as e:
            noise_levels.main([str(tmp_path / "ddpm" / "model.pth"), *bad])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and message in err
