"""Writing files safely: each goes to a fresh temporary file and is renamed onto its path when whole (save_atomic),
or with others all or nothing (stage, then commit). A script writes over a path the user named only where the file
there is its own (written_here). No torch here."""
import os
import shutil
import tempfile

from datatypes import DataError

# Every PNG and .npz the scripts write carries a mark naming this project and the path it was written for (a PNG
# text chunk "Software", an .npz entry "written_by"): a later command may replace it there, never a copy or a move
# of it (docs/robustness.md, "What a mark proves").
MARK = "diffusion course repo"
_writing = []  # the paths being staged now, outermost first: the first is the file's own path, which its mark names


def mark() -> str:
    """The mark of the file being written now (call it inside a writer given to stage or save_atomic)."""
    return f"{MARK}: {os.path.realpath(_writing[0])}"


def written_here(path: str) -> bool:
    """Whether path is a regular file (not a FIFO, which would block) holding the mark of this very path."""
    import numpy as np
    from PIL import Image
    if not os.path.isfile(path):
        return False
    try:
        if path.lower().endswith(".npz"):  # mmap: a .npy named .npz is not read into memory; nor is a huge mark
            with np.load(path, mmap_mode="r", allow_pickle=False) as npz:
                found = str(npz["written_by"]) if npz.zip.getinfo("written_by.npy").file_size < 1 << 16 else None
        else:
            with Image.open(path) as image:
                found = image.info.get("Software") if image.format == "PNG" else None
    except Exception:  # unreadable, not an image or archive, no mark: not ours
        return False
    return found == f"{MARK}: {os.path.realpath(path)}"


def stage(write, path: str) -> tuple:
    """write(tmp) into a fresh temporary file beside path (O_EXCL: a planted link is never followed), with path's
    extension (matplotlib goes by it); (tmp, path) for commit. If writing fails, the temporary file is removed."""
    folder, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=f".tmp{os.path.splitext(name)[1]}", dir=folder)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide results from the user's other accounts and tools
    _writing.append(path)
    try:
        write(tmp)
    except BaseException:
        discard([(tmp, path)])
        raise
    finally:
        _writing.pop()
    return tmp, path


def commit(staged: list, ours_only: bool = False) -> None:
    """Rename each staged (tmp, path) onto its path, in order (renames need no disk space). ours_only: if anything
    not written_here appeared at a path since the script checked, it is kept and nothing is renamed."""
    try:
        if ours_only and not _writing:  # inside another stage (_writing), the outer commit checks
            appeared = [p for _, p in staged if os.path.lexists(p) and not written_here(p)]
            if appeared:
                raise DataError(f"{appeared[0]} appeared while this command ran and is not its own: it is never "
                                "written over; move it away and run the command again")
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException:
        discard(staged)
        raise


def discard(staged: list) -> None:
    for tmp, _ in staged:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_atomic(write, path: str, ours_only: bool = False) -> None:
    """write(tmp), then rename onto path (ours_only: see commit)."""
    commit([stage(write, path)], ours_only)


def save_folder_atomic(write, folder: str) -> None:
    """write(tmp) into a fresh temporary folder beside folder (which must not exist), then rename it whole."""
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}.", suffix=".tmp",
                           dir=os.path.dirname(os.path.abspath(folder)))
    try:
        write(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp's 0700, as for stage's files
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_outputs(outputs: dict, inputs: list) -> None:
    """Refuse, before any work, outputs {option: path} that would replace an input or a file that is not this
    project's output at that path (written_here), or whose folder cannot be written (a missing folder whose
    parent exists is made, one level, as mkdir would: samples/x.png)."""
    for what, path in outputs.items():
        path, folder = os.path.abspath(path), os.path.dirname(os.path.abspath(path))
        given = next((g for g in inputs if os.path.exists(g) and os.path.exists(path) and os.path.samefile(g, path)),
                     None)
        if given:
            raise DataError(f"{what} {path} is one of this command's inputs ({given}): it would be overwritten; "
                            "choose another --out")
        if os.path.lexists(path) and not written_here(path):
            raise DataError(f"{what} {path} exists and is not an output this project wrote there (it may be your "
                            "data, or a copy you made): it is never written over; move it away or choose another --out")
        if not os.path.exists(folder) and os.path.isdir(os.path.dirname(folder)):
            os.makedirs(folder, exist_ok=True)
        if not os.access(folder, os.W_OK) or not os.path.isdir(folder):
            raise DataError(f"{what}: the folder {folder} does not exist or cannot be written: create it or choose "
                            "another --out")


def png_out(option: str, path: str) -> str:
    """An --out that names a PNG file (its .npz, _reverse.png, _sweep.png go beside it)."""
    if not path.lower().endswith(".png"):
        raise DataError(f"{option} {path} must end in .png (the other outputs are named after it)")
    return path
