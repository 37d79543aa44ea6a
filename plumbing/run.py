"""One training run as main.py's loop sees it, `with Run(out, ...) as run:`: the run folder (a manifest, run.json,
lists the files main.py wrote there; a lock keeps out a second process), the device and precision, torchrun (each
process trains on its rows of every batch; DDP averages the gradients, Li et al. 2020, arXiv:2006.15704), resuming,
and each epoch's files saved all or nothing. docs/robustness.md lists what each of these guards against."""
import contextlib
import csv
import datetime
import json
import math
import os
import re
import time
from pathlib import Path

import torch
import torch.distributed as dist

from datatypes import DataError, cause
from plumbing.checkpoints import load_checkpoint, load_weights, save_tensors
from plumbing.errors import JOINED, held, world
from plumbing.files import commit, discard, save_atomic, stage
from plumbing.settings import RESUME_KEEPS

MANIFEST, LOCK = "run.json", ".main.lock"
# Every file main.py writes into a run folder, by name; --overwrite removes only names that match.
RUN_FILES = re.compile(r"(model\.pth|loss\.csv|metrics\.csv|loss_curve\.png|config\.json|forward_diffusion\.png"
                       r"|schedules\.png|image_ep\d{3,}\.png|guidance_w[0-9.e+-]+\.png)")
STAGED = re.compile(r"\.(" + RUN_FILES.pattern + r"|run\.json)\.[A-Za-z0-9_]{8}\.tmp(\.[a-z]+)?")  # files.stage's
EXPLODED, CHECK_EVERY = 1e3, 50  # a loss far above its start (about 1) diverged; steps between reading losses back
RENDEZVOUS = datetime.timedelta(minutes=2)  # torchrun: how long the processes wait for each other at the start


class Run:
    """out/ locked for this run, the device, torchrun's processes, and the state to continue from."""

    def __init__(self, out: str, resume: bool = False, overwrite: bool = False, device: str = "auto",
                 precision: str = "auto", threads: str = "auto"):
        self.out, self.resume, self.overwrite, self.asked = out, resume, overwrite, (device, precision, threads)
        self.rank, self.size = world()
        self.lead, self.fd, self.made, self.files = self.rank == 0, None, False, []
        self.done, self.losses, self.metrics, self.pending, self.share = 0, [], [], [], 1.0

    def __enter__(self) -> "Run":
        rank, size = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")  # both whole numbers, RANK < WORLD_SIZE
        if (rank, size) != (None, None) and not (re.fullmatch(r"\d+ \d+", f"{rank} {size}") and int(rank) < int(size)):
            raise DataError(f"RANK={rank} with WORLD_SIZE={size} is no torchrun process (WORLD_SIZE at least 1, RANK "
                            "in 0..WORLD_SIZE-1): start main.py with torchrun, or unset RANK and WORLD_SIZE")
        self.device = pick_device(self.asked[0])
        if self.size > 1 and self.device.type == "cuda":  # one GPU per process
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if self.lead:
            self.check_folder()
            self.lock()
        return self

    def __exit__(self, kind, *_) -> None:
        with held(then_raise=False):  # a Ctrl-C now waits for the lock's release; the message says where it stands
            if dist.is_initialized():
                if kind is None:
                    dist.barrier()  # no process closes its connections while another still uses them
                dist.destroy_process_group()
            self.release()
        if kind is KeyboardInterrupt:
            raise KeyboardInterrupt(f"interrupted. {self.where()}") from None

    def release(self) -> None:
        """Drop the lock; a folder this run made and wrote nothing into (it failed to start) is removed."""
        if self.fd is not None:
            os.remove(os.path.join(self.out, LOCK))
            os.close(self.fd)
            self.fd = None
            if self.made and not self.files and not os.listdir(self.out):
                os.rmdir(self.out)

    def where(self) -> str:
        """Where the run stands, for messages that end it early."""
        if not self.done:
            return f"No epoch has finished yet, so {self.out}/ holds no checkpoint of this run"
        return f"The last finished epoch, {self.done}, is in {self.out}/model.pth; continue with --resume"

    # --- the folder: its manifest and its lock ----------------------------------------------------

    def check_folder(self) -> None:
        """Refuse a folder that is not this project's run, or a run that would be replaced unasked (a path that
        cannot be a folder or written ends in an OSError, one line from run_script)."""
        out = self.out
        if self.resume and not os.path.isfile(os.path.join(out, "model.pth")):
            raise DataError(f"--resume: no checkpoint at {out}/model.pth: run once without --resume first")
        if not os.path.isdir(out):
            return
        own = read_manifest(out)
        others = sorted(n for n in os.listdir(out) if n not in own and n not in (MANIFEST, LOCK) and n[0] != ".")
        if others and not os.path.lexists(os.path.join(out, MANIFEST)):
            raise DataError(f"--out {out} holds files that main.py did not write ({', '.join(others[:3])}"
                            f"{', ...' if len(others) > 3 else ''}): it is not a run folder; choose a new or empty "
                            "--out")
        clash = [n for n in others if RUN_FILES.fullmatch(n)]
        if clash:
            raise DataError(f"{out}/{clash[0]} looks like a file of this run but is not in its manifest (run.json): "
                            "main.py did not write it and will not write over it; move it away or choose another "
                            "--out")
        if "model.pth" in own and os.path.exists(os.path.join(out, "model.pth")) and not (self.resume or
                                                                                         self.overwrite):
            raise DataError(f"{out}/ already holds a trained run (model.pth): continue it with --resume, "
                            "choose another --out, or replace it with --overwrite")
        self.files = own

    def lock(self) -> None:
        """Take out/.main.lock, which the kernel drops when the process dies, or refuse naming its holder."""
        self.made = not os.path.isdir(self.out)
        os.makedirs(self.out, exist_ok=True)
        path = os.path.join(self.out, LOCK)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        pid = "".join(os.read(fd, 32).decode(errors="replace").split()[:1])  # the process that wrote it, if any
        if os.fstat(fd).st_nlink != 1:  # a hard link to another file: writing the PID would change it
            os.close(fd)
            raise DataError(f"{path} is a hard link (another name for one file), not a lock of main.py: writing to "
                            f"it would change the other file; delete {path} and run again")
        try:
            if os.name == "nt":
                import msvcrt
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            else:
                import fcntl
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise DataError(f"another main.py (process {pid or 'unknown'}) is writing {self.out}: wait for it to "
                            "finish or choose another --out") from None
        self.fd = fd
        if pid and pid != str(os.getpid()):
            print(f"note: {path} was left by process {pid}, which is no longer running (killed?): taken over")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.check_folder()  # again, now that no other process can change the folder
        stale = sorted(n for n in os.listdir(self.out) if STAGED.fullmatch(n))
        for name in stale:  # what a run stopped while saving left
            os.remove(os.path.join(self.out, name))
        if stale:
            print(f"note: removed {len(stale)} staging file{'s' * (len(stale) > 1)} left in {self.out}/ by a run that "
                  f"was stopped while saving ({', '.join(stale[:2])})")

    def path(self, name: str) -> str:
        """The path of a file this run writes; the name goes into the manifest before the file is written. A file
        of that name that the run did not write (a user's, put there during the run) is never written over."""
        if not RUN_FILES.fullmatch(name):
            raise ValueError(f"{name} is not one of plumbing.run.RUN_FILES: add its pattern there")
        if name not in self.files and os.path.lexists(os.path.join(self.out, name)):
            raise DataError(f"{self.out}/{name} appeared during the run and is not its own (not in run.json): "
                            "main.py will not write over it; move it away, then continue with --resume")
        if name not in self.files:
            self.files.append(name)
            write_json({"written_by": "main.py", "files": self.files}, os.path.join(self.out, MANIFEST))
        return os.path.join(self.out, name)

    # --- before the first epoch -------------------------------------------------------------------

    def saved_config(self) -> dict | None:
        """--resume: the config the run was trained with (out/model.pth); None for a new run."""
        return load_checkpoint(os.path.join(self.out, "model.pth"))["config"] if self.resume else None

    def begin(self, config: dict, model, optimizer, ema) -> int:
        """--resume: load out/model.pth into model, optimizer and ema, if it was trained with the same settings
        (settings.RESUME_KEEPS). Record the precision and threads in config; torchrun: join the other processes,
        check that all hold the same data and settings, and wrap the network. Write config.json; the epochs done."""
        if self.resume:
            self.load_state(config, model, optimizer, ema=ema)
        _, precision, threads = self.asked
        native, before = native_bf16(self.device), config.get("precision_used")
        if precision == "auto" and (before == "fp32" or (before == "bf16" and native)):
            precision = before  # a resumed run goes on as it began
        default_threads = torch.get_num_threads() if os.environ.get("OMP_NUM_THREADS") else len(
            os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        config.update(precision_used=precision if precision != "auto" else "bf16" if native else "fp32",
                      threads_used=int(threads) if threads != "auto" else config.get("threads_used") or default_threads)
        torch.set_num_threads(config["threads_used"])  # one count for the whole run: the same seed, the same weights
        if self.size > 1:
            self.store = join(self.device, self.rank, self.size)
            self.agree(config)
            model.net = torch.nn.parallel.DistributedDataParallel(  # rank 0 samples alone between epochs
                model.net, device_ids=[self.device] if self.device.type == "cuda" else None, forward_sync_buffers=False)
        why = "as the run began" if precision == before else "asked for" if precision != "auto" else \
            "the hardware computes bf16" if native else "no native bf16 here"
        print(f"precision {config['precision_used']} ({why}); {config['threads_used']} threads for the whole run"
              + (f"; {self.size} processes (torchrun) share each batch" if self.size > 1 else ""), flush=True)
        if self.lead:
            for name in self.files if self.overwrite else ():  # exactly the old run's files
                path = os.path.join(self.out, name)
                if os.path.islink(path) or os.path.isfile(path):
                    os.remove(path)
            self.files = [] if self.overwrite else self.files
            write_json(config, self.path("config.json"))
        self.config = config
        return self.done

    def load_state(self, config: dict, model, optimizer, ema) -> None:
        state, where = load_checkpoint(os.path.join(self.out, "model.pth")), f"--resume: {self.out}/model.pth"
        for key in RESUME_KEEPS:
            if key in state["config"] and key in config and state["config"][key] != config[key]:
                raise DataError(f"{where} was trained with {key}={state['config'][key]!r}, not {config[key]!r}: resume "
                                "with the same setting, or start another --out")
        if "shipped" in state["config"] or "optimizer" not in state:
            raise DataError(f"{where} holds shipped weights (for sampling), not a run: train a new run with main.py")
        load_weights(model.net, state["model"], f"{where}: its weights do not fit this network")
        load_weights(ema.model.net, state["ema"]["weights"] if state.get("ema") else state["model"], where)
        ema.n = state["ema"]["n"] if state.get("ema") else 0
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, KeyError, TypeError, ValueError) as e:
            raise DataError(f"{where}: its optimiser state does not fit this network ({cause(e)}): pass the options "
                            "it was trained with, or another --out") from e
        self.done, self.losses, self.metrics = state["epoch"], state.get("losses", []), state.get("metrics", [])
        config["threads_used"] = state["config"].get("threads_used")  # the count it began with: the same weights

    def agree(self, config: dict) -> None:
        """torchrun: every process must hold the same data and settings, or the run is refused in one line."""
        every = [None] * self.size
        dist.all_gather_object(every, {k: config.get(k) for k in RESUME_KEEPS})
        other = next((r for r, theirs in enumerate(every) if theirs != every[0]), None)
        if other is not None:
            key = next(k for k in every[other] if every[other][k] != every[0].get(k))
            raise DataError(f"rank {other} holds other data or settings than rank 0 ({key}: {every[other][key]!r}): "
                            "start every process of a torchrun with the same data and options")

    # --- the loop ---------------------------------------------------------------------------------

    def autocast(self):
        """The context a step runs in: bf16 autocast (Kalamkar et al. 2019, arXiv:1905.12322), or nothing."""
        if self.config["precision_used"] == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def split(self, x0: torch.Tensor, cond: dict) -> tuple:
        """torchrun: this process's rows of the batch and of its draws (t, noise: drawn alike by every process)."""
        if self.size == 1:
            return x0, cond
        rows = slice(self.rank * len(x0) // self.size, (self.rank + 1) * len(x0) // self.size)
        self.share = (rows.stop - rows.start) * self.size / len(x0)  # this process's part of the batch mean
        return x0[rows], {k: v[rows] for k, v in cond.items()}

    def backward(self, loss: torch.Tensor) -> None:
        """loss.backward(), weighted by this process's share of the batch: DDP's average is the batch's gradient."""
        with self.collective():
            (loss * self.share).backward()

    def log(self, loss: torch.Tensor, epoch: int, bar) -> None:
        """Keep the step's loss; every CHECK_EVERY steps read them back in one host sync (flush)."""
        self.pending.append(loss.detach() * self.share / self.size)
        if len(self.pending) >= CHECK_EVERY:
            self.flush(epoch)
            bar.note(loss=f"{sum(v for *_, v in self.losses[-50:]) / len(self.losses[-50:]):.4f}")

    def flush(self, epoch: int) -> None:
        """Log the kept losses (under torchrun, the whole batch's) and stop a diverged run in one line."""
        values = torch.stack(self.pending).float() if self.pending else torch.zeros(0)
        with self.collective():
            if self.size > 1:
                dist.all_reduce(values)
        for value in values.tolist():
            if not math.isfinite(value) or value > EXPLODED:
                raise DataError(f"the loss became {value:.3g} at step {len(self.losses) + 1}: training diverged; "
                                f"lower --lr (now {self.config['lr']:g}) or check the settings. {self.where()}")
            self.losses.append((len(self.losses) + 1, epoch, value))
        self.pending = []

    @contextlib.contextmanager
    def collective(self):
        """torchrun: a process that stopped (killed, or failed) ends the others in one line naming it."""
        try:
            yield
        except (RuntimeError, dist.DistError) as e:
            if self.size == 1 or "out of memory" in str(e):
                raise
            self.store.set(f"alive/{self.rank}", "1")
            time.sleep(3)  # the others that are alive say so too
            lost = [r for r in range(self.size) if not self.store.check([f"alive/{r}"])]
            raise DataError(f"rank {', '.join(map(str, lost)) or '?'} of this torchrun stopped ({cause(e)}): "
                            f"{self.where()}") from e

    # --- once per epoch ---------------------------------------------------------------------------

    def save_epoch(self, epoch: int, model, optimizer, ema, figures: dict, scores: dict, seconds: dict) -> None:
        """Log the epoch and write its files all or nothing: the checkpoint model.pth, loss.csv, metrics.csv and
        figures ({name: write(path)}) are staged, then renamed together (a Ctrl-C waits for the renames)."""
        self.flush(epoch)  # the epoch's last losses
        if not self.lead:
            self.done = epoch
            return
        epoch_losses = [v for _, e, v in self.losses if e == epoch]
        self.metrics.append({"epoch": epoch, "loss": round(sum(epoch_losses) / max(len(epoch_losses), 1), 6),
                             **{k: round(v, 1) for k, v in seconds.items()}, **scores})
        state = {"model": getattr(model.net, "module", model.net).state_dict(), "optimizer": optimizer.state_dict(),
                 "epoch": epoch, "ema": ema.state_dict(), "config": self.config, "losses": self.losses,
                 "metrics": self.metrics}  # model.net.module: the network inside DDP
        writers = {"model.pth": lambda p: save_tensors(state, p),
                   "loss.csv": lambda p: write_csv([dict(zip(("step", "epoch", "loss"), r)) for r in self.losses], p),
                   "metrics.csv": lambda p: write_csv(self.metrics, p), **figures}
        staged = []
        try:
            for name, write in writers.items():
                staged.append(stage(write, self.path(name)))
        except BaseException as e:
            discard(staged)
            if isinstance(e, OSError):
                raise DataError(f"could not write the files of epoch {epoch} ({e.strerror or cause(e)}): none of them "
                                f"was kept; free some space. {self.where()}") from e
            raise
        with held():
            commit(staged)
            self.done = epoch
        grids = "".join(f"{n}, " for n in figures if n.startswith("image_ep"))
        print(", ".join(f"{k} {v}" for k, v in self.metrics[-1].items()) + f" -> {self.out}/{grids}model.pth",
              flush=True)


def write_json(obj, path: str) -> None:
    save_atomic(lambda p: Path(p).write_text(json.dumps(obj, indent=2)), path)


def write_csv(rows: list, path: str) -> None:
    """rows: dicts, written with the union of their keys as header (into a file that save_epoch stages)."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        w.writeheader()
        w.writerows(rows)


def read_manifest(out: str) -> list:
    """The file names out/run.json lists ([] if there is none); a manifest that is not ours is refused."""
    path = os.path.join(out, MANIFEST)
    if not os.path.lexists(path):
        return []
    try:
        with open(path) as f:
            files = json.load(f)["files"]
        if isinstance(files, list) and all(isinstance(n, str) and RUN_FILES.fullmatch(n) for n in files):
            return files
    except (OSError, ValueError, KeyError, TypeError, RecursionError):  # RecursionError: JSON nested too deep
        pass
    raise DataError(f"{path} is not a main.py manifest (a list of the run's own file names): this folder is not "
                    "a run of this project; choose another --out")


def pick_device(name: str) -> torch.device:
    """auto: cuda if available, else cpu; or a named device that must exist here."""
    gpus = torch.cuda.device_count()
    if name == "auto":
        return torch.device("cuda" if gpus else "cpu")
    device = re.fullmatch(r"cpu|cuda(:\d+)?", name) and torch.device(name)
    if not device or (device.type == "cuda" and (device.index or 0) >= gpus):
        raise DataError(f"--device {name!r} is not a device here (this machine has {gpus} CUDA GPU(s)): use auto, "
                        "cpu, cuda or cuda:N")
    return device


def native_bf16(device: torch.device) -> bool:
    """Does this device compute bf16 natively? CUDA: compute capability 8 (Ampere) or later. CPU: the avx512_bf16
    or amx_bf16 instructions. Without them bf16 is emulated and about 100x slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    found = torch.cpu.get_capabilities()
    return bool(found.get("avx512_bf16") or found.get("amx_bf16"))


def join(device: torch.device, rank: int, size: int):
    """Join the other processes (torchrun's rendezvous; RENDEZVOUS at most) and return the shared store."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    host, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), os.environ.get("MASTER_PORT", "29500")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise DataError(f"MASTER_PORT={port} is not a port number (1..65535): start main.py with torchrun")
    hosting = rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"  # torchrun hosts its own
    store = None
    try:  # each rank says it has come; all wait for all
        store = dist.TCPStore(host, int(port), size, hosting, timeout=RENDEZVOUS, wait_for_workers=False)
        store.set(f"came/{rank}", "1")
        store.wait([f"came/{r}" for r in range(size)], RENDEZVOUS)
    except (RuntimeError, ValueError) as e:  # DistStoreError (a RuntimeError): a rank never came
        missing = [r for r in range(size) if not store.check([f"came/{r}"])] if store is not None else [0]
        raise DataError(f"rank {rank} of {size} waited {RENDEZVOUS.seconds} s at {host}:{port}, and rank"
                        f"{'s' * (len(missing) > 1)} {', '.join(map(str, missing))} never came ({cause(e)}): start all "
                        f"{size} processes together (torchrun --nproc_per_node {size} main.py ...)") from e
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=rank, world_size=size,
                            timeout=datetime.timedelta(hours=1))  # the others wait while rank 0 samples and saves
    JOINED.append(rank)
    return store
