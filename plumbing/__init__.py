"""The plumbing: what a run needs that no paper describes. A student can skip this folder.

run.py          one training run as main.py's loop sees it: the run folder and its lock, the device and precision,
                torchrun, resuming, the epoch's files saved all or nothing
files.py        atomic writes; outputs replace only this project's own files
checkpoints.py  checkpoints loaded safely (tensors only, never code) and checked; settings.py: every setting's bounds
errors.py       one line on stderr for bad input, exit code 2; Ctrl-C; a traceback for everything else
progress.py     a progress bar with the time remaining; formats.py: file formats, each checked before it is read
preflight.py    what must be checked before torch starts; ship.py: small weights for weights/
"""
