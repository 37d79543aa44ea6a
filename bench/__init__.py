"""Measurements, not tests: how fast the networks train and sample here and how they race the peers'
U-Nets to a fid (`python -m bench`), and whether synthetic images help a segmenter
(`python -m bench.synthetic_gain`). docs/speed.md and docs/medical.md report what they printed."""
