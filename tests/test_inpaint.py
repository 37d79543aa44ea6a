"""RePaint (Lugmayr et al. 2022, arXiv:2201.09865) inpainting: DDPM.inpaint with the exact noise
predictor of a point mass keeps the known pixels exactly and turns the region into the point mass;
repaint_times walks the resampling schedule; sample.py --inpaint end to end and its refusals."""
import numpy as np
import pytest
import torch
from PIL import Image

import main
import sample
from ddpm import DDPM, linear_beta_schedule
from process import repaint_times
from test_ddim import PointMassEps


@pytest.mark.parametrize("T, j, r", [(10, 3, 2), (50, 10, 5), (7, 7, 3), (20, 1, 4)])
def test_repaint_times_walk_each_block_r_times_and_end_at_zero(T, j, r):
    times = repaint_times(T, j, r)
    assert times[0] == T and times[-1] == 0
    assert all(abs(a - b) == 1 for a, b in zip(times, times[1:]))
    downs = sum(b < a for a, b in zip(times, times[1:]))
    last = T % j or j  # the last block, ending at 0, is walked once
    assert downs == (T - last) * r + last


def test_one_walk_is_plain_algorithm_2():
    assert repaint_times(6, 2, 1) == [6, 5, 4, 3, 2, 1, 0]


@pytest.mark.parametrize("jump_count", [1, 3])
def test_point_mass_model_keeps_known_pixels_and_fills_the_region(jump_count):
    """Data = one image c: the reverse steps of the region end at c (eq. 15 is exact for a point
    mass), and at t = 0 the known pixels are x0 itself, whatever the resampling."""
    T = 50
    model = DDPM(torch.nn.Identity(), linear_beta_schedule(T))
    c = torch.linspace(-0.8, 0.8, 64).view(1, 1, 8, 8)
    model.net = PointMassEps(model.alpha_bar, c)
    x0 = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    keep = torch.ones(3, 1, 8, 8)
    keep[:, :, 2:6, 3:7] = 0
    x = model.inpaint(x0, keep, jump_length=5, jump_count=jump_count, generator=torch.Generator().manual_seed(1))
    assert torch.equal(x[keep.bool().expand_as(x)], x0[keep.bool().expand_as(x)])
    region = ~keep.bool().expand_as(x)
    assert torch.allclose(x[region], c.expand_as(x)[region], atol=1e-4)


TINY = ["--dataset", "phantom", "--image-size", "16", "--unet-widths", "8", "8", "8", "--limit", "32",
        "--batch-size", "16", "--n-T", "20", "--num-samples", "2", "--sample-steps", "2", "--eval-samples", "0",
        "--epochs", "1"]


@pytest.fixture(scope="module")
def mask_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("cond")
    main.main(["COND", *TINY, "--out", str(out)])
    return out / "model.pth"


def png(path, a):
    Image.fromarray(a).save(path)
    return str(path)


@pytest.mark.slow
def test_inpaint_keeps_the_rest_of_the_image(mask_model, tmp_path):
    """The figure (image | region | condition mask | results) and the .npz; outside the region the
    results are the image, exactly."""
    image = (np.arange(256).reshape(16, 16) % 200).astype(np.uint8)
    region = np.zeros((16, 16), np.uint8)
    region[4:10, 5:12] = 255
    argv = [str(mask_model), "--inpaint", png(tmp_path / "im.png", image), "--region", png(tmp_path / "r.png", region),
            "--cond-mask", "none", "--jump-length", "5", "--jump-count", "2", "--num-samples", "3",
            "--out", str(tmp_path / "in.png")]
    sample.main(argv)
    x = np.load(tmp_path / "in.npz")["images"]
    assert x.shape == (3, 1, 16, 16)
    outside = region == 0
    assert np.allclose(x[:, 0][:, outside], (image[outside] / 255.0 * 2 - 1)[None], atol=1e-6)
    assert Image.open(tmp_path / "in.png").size == (4 * (6 * 18 + 2), 14 + 4 * (18 + 2))  # 16 px shown 4x, headed


@pytest.mark.slow
@pytest.mark.parametrize("region_shape, extra, fragment", [
    ((8, 8), ["--cond-mask", "none"], "the region must have its image's size"),
    ((16, 16), [], "pass --cond-mask MASK"),
    (None, ["--cond-mask", "none"], "marks nothing to regenerate"),
    ((16, 16), ["--cond-mask", "MASK8"], "the condition mask must have its image's size"),  # it was resized
    ((16, 16), ["--cond-mask", "none", "--reverse", "--sampler", "euler", "--steps", "3"],
     "--reverse, --sampler, --steps do not apply to --inpaint"),  # all three were ignored, exit 0
])
def test_inpaint_refusals_are_one_line(mask_model, tmp_path, capsys, region_shape, extra, fragment):
    image = png(tmp_path / "im.png", np.zeros((16, 16), np.uint8))
    region = np.zeros(region_shape or (16, 16), np.uint8)
    region[:4, :4] = 255 if region_shape else 0
    extra = [png(tmp_path / "m8.png", np.full((8, 8), 255, np.uint8)) if a == "MASK8" else a for a in extra]
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        sample.main([str(mask_model), "--inpaint", image, "--region", png(tmp_path / "r.png", region), *extra,
                     "--out", str(tmp_path / "in.png")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and fragment in err, err
