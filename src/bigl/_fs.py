"""Output files: checks before any work starts, atomic writes, and clean-up after a killed run.

Every file bigl writes goes through :func:`atomic_path`: the data is written to
a hidden temporary file beside the target, named
``.<target name>.<pid>.<random>.tmp<suffix>``, and renamed over the target only
once complete. A run killed mid-write (SIGKILL, power loss) therefore never
leaves a half-written target; it may leave its temporary file, which
:func:`clean_stale_temps` removes the next time anything writes that target
(a temporary file whose writer process is still alive is left alone).

:func:`check_output` is what the CLI calls for every output path *before*
training, adapting or segmenting, so that a wrong suffix, an unwritable folder
or an existing file is reported at once rather than after the work.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bigl.errors import BiglError

log = logging.getLogger(__name__)


def _temp_pattern(name: str) -> re.Pattern[str]:
    # current form: .<name>.<pid>.<random>.tmp[<suffix>]; older bigl wrote .<name>.<random>(.tmp|<nifti suffix>)
    return re.compile(rf"^\.{re.escape(name)}\.(?:(\d+)\.[A-Za-z0-9_]+\.tmp(?:\.[A-Za-z.]+)?"
                      rf"|[A-Za-z0-9_]{{8}}(?:\.tmp|\.nii|\.nii\.gz))$")


# the writability probe of check_output: .bigl-write-check.<pid>.<random>
_PROBE = re.compile(r"^\.bigl-write-check\.(\d+)\.[A-Za-z0-9_]+$")


def pid_alive(pid: int) -> bool:
    """Whether a process of this pid is running (ours or, as far as the OS lets us see, anyone's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except (OverflowError, ValueError):  # not a pid this system can have
        return False
    return pid > 0


def clean_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that killed writers of ``path`` left beside it; return what was removed.

    A temporary file whose writer (the pid in its name) is still running is kept. Writability probes of
    killed processes in that folder go too.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = _temp_pattern(path.name)
    removed = []
    for entry in path.parent.iterdir():
        match = pattern.match(entry.name) or _PROBE.match(entry.name)
        if match is None or (match.group(1) and pid_alive(int(match.group(1)))):
            continue
        try:
            entry.unlink()
            removed.append(entry)
        except OSError as exc:  # another cleaner got there first, or no permission: not worth failing a run
            log.debug("could not remove stale temporary file %s: %s", entry, exc)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted write of %s", len(removed), path)
    return removed


@contextmanager
def atomic_path(path: Path, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``, else delete it.

    An interrupted write never leaves a half-written ``path``; temporary files
    of earlier, killed writes of ``path`` are removed first. ``suffix`` ends
    the temporary name (e.g. ``.nii.gz`` so that a writer picks the same
    format). The file gets the usual permissions (0666 minus the umask), not
    mkstemp's private 0600.
    """
    clean_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _writable_folder(path: Path, what: str) -> None:
    """Raise unless the folder that will hold ``path`` exists (or can be created) and accepts a new file."""
    folder = path.parent
    while not folder.exists():  # nearest existing ancestor: the write creates the rest
        folder = folder.parent
    if not folder.is_dir():
        raise BiglError(f"{path}: cannot write the {what} there, {folder} is a file, not a folder; "
                        "choose a path inside a folder")
    try:  # os.access says yes to root even on read-only mounts; a real file says the truth
        fd, probe = tempfile.mkstemp(prefix=f".bigl-write-check.{os.getpid()}.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise BiglError(f"{path}: the folder {folder} is not writable ({exc.strerror or exc}); "
                        f"choose a folder you can write to for the {what}") from exc


def check_output(path: str | os.PathLike, *, suffix: str | tuple[str, ...], overwrite: bool, what: str) -> Path:
    """Check an output path before any work: suffix, a writable folder, and no existing file unless ``overwrite``.

    ``suffix`` is one ending or several (e.g. ``(".nii.gz", ".nii")``); ``what``
    names the output in messages ("model bundle", "label volume"). Returns the
    path. Raises :class:`BiglError` with the fix; never creates or changes a file.
    """
    path = Path(path)
    endings = (suffix,) if isinstance(suffix, str) else tuple(suffix)
    if not path.name.lower().endswith(endings):
        example = path.name.split(".")[0] or "output"
        raise BiglError(f"{path}: the {what} must end in {' or '.join(endings)} "
                        f"(e.g. {path.with_name(example + endings[0])})")
    if path.is_dir():
        raise BiglError(f"{path} is a folder; give a file name for the {what} ending in {endings[0]}")
    if path.exists() and not overwrite:
        raise BiglError(f"{path} already exists; pass --overwrite (overwrite=True) to replace it, "
                        "or choose another path")
    _writable_folder(path, what)
    return path


def check_distinct(paths: list[Path]) -> None:
    """Raise if two outputs (or an output and an input) of one command are the same file."""
    seen: dict[Path, Path] = {}
    for p in paths:
        key = Path(os.path.abspath(p))
        if key in seen:
            raise BiglError(f"{p} is given twice (as input or output) in one command; "
                            "give each output its own file name")
        seen[key] = p
