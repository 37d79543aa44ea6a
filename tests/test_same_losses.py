"""Refactors change no training: the losses of three tiny runs as an earlier version wrote them to loss.csv
(commit c781c56 for the U-Net's first design and the CNN, 821006e for the second), equal within float rounding.
Another instruction set (AVX-512 against AMX), thread count or torch version sums in another order: those losses
differ by about 1e-7 relative (6e-8 measured between two machines), while a change of the maths, such as a wrong
min-SNR weight or another schedule, moves them by 1e-2 or more."""
import csv

import pytest

import main

pytestmark = pytest.mark.slow  # end to end: the scripts on tiny runs

ARGS = ["DDPM", "--dataset", "shapes", "--limit", "64", "--batch-size", "16", "--n-T", "20", "--num-samples", "2",
        "--sample-steps", "2", "--eval-samples", "0", "--epochs", "1", "--schedule", "linear"]  # the schedule then
BEFORE = {  # loss.csv of c781c56 for the same arguments (the design is named in the test's parameters)
    "default": [0.3588324189186096, 0.4767339825630188, 0.5961902737617493, 0.454198956489563],
    "l_simple": [1.1585193872451782, 1.1336933374404907, 1.1128051280975342, 1.092259407043457],
    "unet_v2": [0.3237758278846741, 0.4280141592025757, 0.5372434258460999, 0.39981186389923096],
}
TOLERANCE = 1e-5  # relative: far above float rounding (1e-7), far below a change of the maths (1e-2)


@pytest.mark.parametrize("name, extra, version", [("default", ["--net", "unet", "--unet-widths", "8", "8", "8"], 1),
                                                  ("unet_v2", ["--net", "unet", "--unet-widths", "8", "8", "8"], 2),
                                                  ("l_simple", ["--net", "cnn", "--min-snr", "0"], 1)])
def test_losses_are_those_of_the_code_before_the_refactors(tmp_path, name, extra, version):
    main.main([*ARGS, *extra, "--unet-version", str(version), "--precision", "fp32", "--out", str(tmp_path)])
    losses = [float(r["loss"]) for r in csv.DictReader(open(tmp_path / "loss.csv"))]
    assert losses == pytest.approx(BEFORE[name], rel=TOLERANCE)
