"""A run folder belongs to its run. main.py writes only into a new or empty folder, or into its own
run: one whose manifest (run.json, the names of the files main.py wrote there) or, for folders of
earlier versions, whose loadable checkpoint with its config.json says so. --overwrite removes
exactly the run's files and nothing else; a lock stops a second process from writing the same folder.

The lock is an fcntl lock on .main.lock, which the kernel drops when its process ends, however it
ends: a run killed with SIGKILL leaves no lock that blocks --resume. Where fcntl is missing
(Windows), the lock is the file itself, created with O_EXCL; one left by a dead process is
reported with how to clear it."""
import json
import os
import re

from plumbing.errors import DataError
from plumbing.files import write_json

MANIFEST, LOCK = "run.json", ".main.lock"
# Every file main.py writes into a run folder, by name; --overwrite removes only names that match.
RUN_FILES = re.compile(r"(model\.pth|loss\.csv|metrics\.csv|loss_curve\.png|config\.json|forward_diffusion\.png"
                       r"|schedules\.png|image_ep\d{3,}\.png|guidance_w[0-9.e+-]+\.png)")
# The staging files of those (plumbing/files.reserve: ".NAME.XXXXXXXX.tmp.EXT"), which a killed run leaves.
STAGED = re.compile(r"\.(" + RUN_FILES.pattern + r"|run\.json)\.[A-Za-z0-9_]{8}\.tmp(\.[a-z]+)?")
LEGACY_FILES = ("model.pth", "loss.csv", "metrics.csv", "loss_curve.png", "config.json", "forward_diffusion.png",
                "schedules.png")


def read_manifest(out: str) -> list | None:
    """The file names the manifest lists, None if there is none; a manifest that is not ours is refused."""
    path = os.path.join(out, MANIFEST)
    if not os.path.lexists(path):
        return None
    try:
        with open(path) as f:
            files = json.load(f)["files"]
        if isinstance(files, list) and all(isinstance(n, str) and RUN_FILES.fullmatch(n) for n in files):
            return files
    except (OSError, ValueError, KeyError, TypeError, RecursionError):  # RecursionError: JSON nested too deep
        pass
    raise DataError(f"{path} is not a main.py manifest (a list of the run's own file names): this folder is not "
                    "a run of this project; choose another --out")


def legacy_files(out: str) -> list | None:
    """A folder written before manifests existed: the files that version wrote, if out/model.pth is a
    checkpoint of this project that loads and out/config.json exists; None otherwise."""
    from plumbing.checkpoints import load_checkpoint
    if not (os.path.isfile(os.path.join(out, "model.pth")) and os.path.isfile(os.path.join(out, "config.json"))):
        return None
    try:
        ckpt = load_checkpoint(os.path.join(out, "model.pth"))
    except DataError:
        return None
    epochs = ckpt.get("epoch") if isinstance(ckpt.get("epoch"), int) else 0
    sweep = ckpt["config"].get("guidance_sweep") or []
    names = [*LEGACY_FILES, *(f"image_ep{e:03d}.png" for e in range(1, epochs + 1)),
             *(f"guidance_w{w:g}.png" for w in sweep if isinstance(w, (int, float)))]
    return [n for n in names if RUN_FILES.fullmatch(n)]


class RunFolder:
    """out/ claimed for one run: check() before the data load, lock(), clear() once the data have loaded
    (a run that fails to start removes nothing), path(name) for every file written, release() at the end."""

    def __init__(self, out: str, resume: bool, overwrite: bool):
        self.out, self.resume, self.overwrite = out, resume, overwrite
        self.files, self.fd, self.made = [], None, False

    def check(self) -> None:
        """Refuse a folder that is not this project's run, or a run that would be replaced unasked."""
        out = self.out
        if os.path.exists(out) and not os.path.isdir(out):
            raise DataError(f"--out {out} is a file, not a folder: choose another --out")
        if self.resume and not os.path.isfile(os.path.join(out, "model.pth")):
            raise DataError(f"--resume: no checkpoint at {out}/model.pth: run once without --resume first")
        if not os.path.isdir(out):
            return
        own = read_manifest(out)
        own = own if own is not None else legacy_files(out)
        others = sorted(n for n in os.listdir(out) if n not in (own or []) and n not in (MANIFEST, LOCK)
                        and not n.startswith("."))
        if own is None and others:
            raise DataError(f"--out {out} holds files that main.py did not write ({', '.join(others[:3])}"
                            f"{', ...' if len(others) > 3 else ''}): it is not a run folder; choose a new or empty "
                            "--out")
        clash = [n for n in others if RUN_FILES.fullmatch(n)]
        if own is not None and clash:
            raise DataError(f"{out}/{clash[0]} looks like a file of this run but is not in its manifest (run.json): "
                            "main.py did not write it and will not write over it; move it away or choose another --out")
        if own is not None and not self.resume and not self.overwrite and "model.pth" in own \
                and os.path.exists(os.path.join(out, "model.pth")):
            raise DataError(f"{out}/ already holds a trained run (model.pth): continue it with --resume, "
                            "choose another --out, or replace it with --overwrite")
        self.files = list(own or [])

    def lock(self) -> None:
        """Take out/.main.lock for this process, or refuse naming the process that holds it."""
        if not os.path.isdir(self.out):
            os.makedirs(self.out)
            self.made = True
        path = os.path.join(self.out, LOCK)
        try:
            import fcntl
        except ImportError:
            fcntl = None
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | (0 if fcntl else os.O_EXCL)
        try:
            self.fd = os.open(path, flags, 0o644)
        except FileExistsError:  # no fcntl: the file itself is the lock
            pid = lock_holder(path)
            if pid is not None and not alive(pid):
                raise DataError(f"{path} was left by process {pid}, which is no longer running: if no run is "
                                f"writing {self.out}, delete {path} and start again") from None
            raise DataError(f"another main.py (process {pid}) is writing {self.out}: wait for it to finish or "
                            "choose another --out") from None
        if fcntl is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                pid = lock_holder(path)
                os.close(self.fd)
                self.fd = None
                raise DataError(f"another main.py (process {pid}) is writing {self.out}: wait for it to finish or "
                                "choose another --out") from None
            pid = lock_holder(path)
            if pid is not None and pid != os.getpid() and not alive(pid):
                print(f"note: {path} was left by process {pid}, which is no longer running (killed?): taken over")
        links = os.fstat(self.fd).st_nlink
        if links != 1:  # a hard link to another file: writing the PID would write into that file
            os.close(self.fd)
            self.fd = None
            raise DataError(f"{path} is a hard link ({links} names for one file), not a lock of main.py: writing to "
                            f"it would change the other file; delete {path} (the other name keeps its file) and "
                            "run again")
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())
        self.check()  # again, now that no other process can change the folder
        self.remove_staged()

    def remove_staged(self) -> None:
        """Remove the staging files (STAGED) a killed run of this folder left: nothing else is named so."""
        stale = sorted(n for n in os.listdir(self.out) if STAGED.fullmatch(n))
        for name in stale:
            os.remove(os.path.join(self.out, name))
        if stale:
            print(f"note: removed {len(stale)} staging file{'s' * (len(stale) > 1)} left in {self.out}/ by a run that "
                  f"was stopped while saving ({', '.join(stale[:2])}{', ...' if len(stale) > 2 else ''})")

    def clear(self) -> None:
        """--overwrite: remove exactly the old run's files (those that are plain files or links)."""
        if self.overwrite:
            for name in self.files:
                path = os.path.join(self.out, name)
                if os.path.islink(path) or os.path.isfile(path):
                    os.remove(path)
            self.files = []
        self.save_manifest()

    def path(self, name: str) -> str:
        """The path of a file this run writes; the name goes into the manifest before the file is written. A file
        of that name that the run did not write (a user's, put there during the run) is never written over."""
        if not RUN_FILES.fullmatch(name):
            raise ValueError(f"{name} is not one of runfolder.RUN_FILES: add its pattern there")
        if name not in self.files and os.path.lexists(os.path.join(self.out, name)):
            raise DataError(f"{self.out}/{name} appeared during the run and is not its own (not in run.json): "
                            "main.py will not write over it; move it away, then continue with --resume")
        if name not in self.files:
            self.files.append(name)
            self.save_manifest()
        return os.path.join(self.out, name)

    def save_manifest(self) -> None:
        write_json({"written_by": "main.py", "files": self.files}, os.path.join(self.out, MANIFEST))

    def release(self) -> None:
        """Drop the lock; a folder this run made and wrote nothing into (it failed to start) is removed."""
        if self.fd is None:
            return
        os.remove(os.path.join(self.out, LOCK))
        os.close(self.fd)
        self.fd = None
        if self.made and not self.files:
            if os.path.isfile(os.path.join(self.out, MANIFEST)):
                os.remove(os.path.join(self.out, MANIFEST))
            if not os.listdir(self.out):
                os.rmdir(self.out)


def lock_holder(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip() or "x")
    except (OSError, ValueError):
        return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True
