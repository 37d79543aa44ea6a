"""Writing files safely: every file a script writes goes through save_atomic (a fresh temporary file,
then a rename, so an interrupted run never leaves half a file), or through stage/commit when several
files must change together (an epoch's checkpoint, logs and grid: all or nothing), or, for a new folder
of files (sample.py --nifti), through save_folder_atomic. Also JSON and CSV
writers, and the check that no script writes over one of its own inputs. No torch here."""
import csv
import json
import os
import shutil
import tempfile

from plumbing.errors import DataError


def reserve(path: str) -> str:
    """A fresh, empty temporary file beside path (O_EXCL: a planted link is never followed), with
    path's extension so that writers that go by it (matplotlib) still know the format."""
    folder, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=f".tmp{os.path.splitext(name)[1]}", dir=folder)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide results from the user's other accounts and tools
    return tmp


def stage(write, path: str) -> tuple:
    """Run write(tmp) on a reserved temporary file and return (tmp, path) for commit; if writing
    fails, the temporary file is removed and the error raised."""
    tmp = reserve(path)
    try:
        write(tmp)
    except BaseException:
        discard([(tmp, path)])
        raise
    return tmp, path


def commit(staged: list) -> None:
    """Rename each staged (tmp, path) onto its path, in order. Renames need no disk space."""
    for tmp, path in staged:
        os.replace(tmp, path)


def discard(staged: list) -> None:
    for tmp, _ in staged:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_atomic(write, path: str) -> None:
    """write(tmp), then rename onto path."""
    commit([stage(write, path)])


def save_folder_atomic(write, folder: str) -> None:
    """write(tmp) into a fresh temporary folder beside folder, then rename it to folder, which must not
    exist: a folder of several files appears whole or not at all (on failure the temporary one is removed)."""
    parent = os.path.dirname(os.path.abspath(folder))
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}.", suffix=".tmp", dir=parent)
    try:
        write(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp's 0700, as for reserve's files
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(obj, path: str) -> None:
    def write(p):
        with open(p, "w") as f:
            json.dump(obj, f, indent=2)
    save_atomic(write, path)


def write_loss_csv(losses: list, path: str) -> None:
    """losses: [(step, epoch, loss)] as step,epoch,loss rows."""
    def write(p):
        with open(p, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", "epoch", "loss"])
            w.writerows(losses)
    save_atomic(write, path)


def write_metrics_csv(rows: list, path: str) -> None:
    """rows: list of dicts, one per epoch, written with the union of their keys as header."""
    keys = list(dict.fromkeys(k for r in rows for k in r))

    def write(p):
        with open(p, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
    save_atomic(write, path)


# Every PNG and .npz the scripts write carries this mark (a PNG text chunk "Software", an .npz entry "written_by"),
# so that a later command may replace its own earlier output and nothing else (a dataset, a user's image).
MARK = "diffusion course repo (main.py, sample.py, anomaly.py)"


def written_here(path: str) -> bool:
    """Whether the existing file at path carries MARK: a file of this project's, which an output may replace."""
    import zipfile
    try:
        if path.lower().endswith(".npz"):
            with zipfile.ZipFile(path) as z:
                return "written_by.npy" in z.namelist()
        from PIL import Image
        with Image.open(path) as image:
            return image.format == "PNG" and image.info.get("Software") == MARK
    except Exception:  # unreadable, not an image or archive: not ours
        return False


def check_outputs(outputs: dict, inputs: list) -> None:
    """Refuse, before any work, outputs that would replace one of the inputs (a checkpoint, images,
    masks) or any existing file this project did not write (written_here: a dataset's .npz, a mask, a user's
    image), that are folders, or whose folder is missing or not writable; a missing folder whose parent
    exists and is writable is made (as mkdir would, one level: samples/x.png). outputs: {option: path}."""
    for what, path in outputs.items():
        path = os.path.abspath(path)
        for given in inputs:
            if os.path.exists(given) and os.path.exists(path) and os.path.samefile(given, path):
                raise DataError(f"{what} {path} is one of this command's inputs ({given}): it would be overwritten; "
                                "choose another --out")
        if os.path.isdir(path):
            raise DataError(f"{what} {path} is a folder: give a file name ending in .png")
        if os.path.lexists(path) and not written_here(path):
            raise DataError(f"{what} {path} exists and was not written by this project's scripts (it may be your "
                            "data): it is never written over; move it away or choose another --out")
        folder = os.path.dirname(path)
        parent = os.path.dirname(folder)
        if not os.path.exists(folder) and os.path.isdir(parent) and os.access(parent, os.W_OK):
            os.makedirs(folder, exist_ok=True)
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise DataError(f"{what}: the folder {folder} does not exist or cannot be written: create it or choose "
                            "another --out")


def png_out(option: str, path: str) -> str:
    """An --out that names a PNG file (its .npz, _reverse.png, _sweep.png go beside it)."""
    if not path.lower().endswith(".png"):
        raise DataError(f"{option} {path} must end in .png (the other outputs are named after it)")
    return path
