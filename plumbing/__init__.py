"""The plumbing: what a run needs that no paper describes. A student can skip this folder.

run.py        one training run as main.py's loop sees it (`with Run(args) as run:`): the folder, torchrun,
              precision and threads, resuming, the epoch's files saved all or nothing
runfolder.py  a run folder belongs to its run: its manifest and its lock
files.py      atomic writes (temporary file, then rename), CSV and JSON; outputs replace only our own files
checkpoints.py  checkpoints loaded safely (tensors only, never code) and checked
settings.py   every setting with its type and bounds, in one list
catalog.py    the names a user can type and the training defaults, read without importing torch
errors.py     one line on stderr for bad input, exit code 2; a traceback for everything else
progress.py   a progress bar on a terminal, a plain line every 30 s in a log
speed.py      device, bf16 or fp32, and one thread count per run
parallel.py   data-parallel training under torchrun
formats.py    file formats (IDX, npz, CSV, images, NIfTI), each checked before it is read
preflight.py  what must be checked before torch starts (OMP_NUM_THREADS); every script imports it first
ship.py       small trained weights for weights/ (python -m plumbing.ship)
"""
