"""Measurements, not tests: how fast the networks train and sample here and how they race the peers'
U-Nets to a fid (`python -m bench`), whether synthetic images help a segmenter (`python -m bench.synthetic_gain`)
and how well a network knows x_0 at each noise level (`python -m bench.noise_levels`). docs/speed.md and
docs/medical.md report what they printed."""
