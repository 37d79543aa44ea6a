"""The plumbing: what a run needs that no paper describes (run folders and their lock, torchrun, precision, safe
file writes, checkpoints loaded safely and checked, one-line errors, progress). A student can skip this folder."""
