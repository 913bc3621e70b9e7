"""Content-addressed storage of model files: ``STORAGE/models/<sha256 of the weights>/``.

An upload is streamed to a private staging folder in chunks (never whole in memory), counted
against the size limit as it arrives, validated by the engine, and only then moved into place
under its weights' SHA-256 with one atomic rename. The same weights stored twice keep the first
copy. Nothing half-written is ever visible under ``models/``: a refused upload leaves no trace.

The move happens before the model's row commits, so that no row ever names files that are not
there. Until that commit, the stored folder carries an ``UNCOMMITTED`` marker, removed once the
row commits (``mark_committed``). An upload whose row never commits (the database went away,
the process was killed mid-request) leaves a staging folder, or a stored folder with its marker;
the sweeper removes both once older than ``STAGING_MAX_AGE`` (``remove_stale``), long after any
request that could still commit a row for them. A stored folder without the marker is never
removed by the sweeper, whatever database it is compared with: a service pointed at the wrong
database by mistake cannot empty its storage.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import BinaryIO

from app.engine.architectures import open_model, open_trusted
from app.engine.errors import ModelTooLarge
from app.engine.model_files import PICKLE_SUFFIXES, LoadedModel, refuse_pickle
from app.engine.stored_outputs import OUTPUTS_FILE, save_outputs
from app.engine.weightspace import STATISTICS_FILE, save_statistics
from app.registry.errors import UploadRefused

CHUNK = 1 << 20
# In a stored model folder whose row has not committed yet (see the module's docstring).
UNCOMMITTED = ".uncommitted"
# What a model folder may hold; anything else in an upload is refused by name.
ACCEPTED_NAMES = {"config.json", "README.md", "adapter_config.json", "model.safetensors.index.json"}
ACCEPTED_SUFFIXES = (".safetensors",)


def _check_name(filename: str | None) -> str:
    # Only the base name counts: a client's folder names never reach the file system.
    name = Path((filename or "").replace("\\", "/")).name
    if not name or name in {".", ".."}:
        raise UploadRefused(f"file name {filename!r} is not a usable file name")
    refuse_pickle(Path(name))
    if name not in ACCEPTED_NAMES and not name.endswith(ACCEPTED_SUFFIXES):
        raise UploadRefused(
            f"{name}: not a model file; upload *.safetensors, config.json, README.md, "
            "adapter_config.json or model.safetensors.index.json "
            f"(pickle formats {', '.join(PICKLE_SUFFIXES)} are refused)"
        )
    return name


def stage_upload(
    storage_dir: Path, files: Iterable[tuple[str | None, BinaryIO]], max_bytes: int
) -> Path:
    """Stream ``(filename, file)`` pairs into a new staging folder and return it."""
    staging = storage_dir / "staging" / uuid.uuid4().hex
    staging.mkdir(parents=True)
    total = 0
    try:
        seen = set()
        for filename, stream in files:
            name = _check_name(filename)
            if name in seen:
                raise UploadRefused(f"{name} uploaded twice")
            seen.add(name)
            with open(staging / name, "wb") as out:
                while chunk := stream.read(CHUNK):
                    total += len(chunk)
                    if total > max_bytes:
                        raise ModelTooLarge(f"upload is above the limit of {max_bytes} bytes")
                    out.write(chunk)
        if not seen:
            raise UploadRefused("no files uploaded; send the model's files in the 'files' field")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def stage_folder(storage_dir: Path, source: Path, max_bytes: int) -> Path:
    """Stage the model files of a local folder (a hub snapshot) as if they were uploaded."""
    paths = [p for p in sorted(source.iterdir()) if p.is_file() and _is_model_file(p.name)]
    with ExitStack() as stack:
        files = [(p.name, stack.enter_context(open(p, "rb"))) for p in paths]
        return stage_upload(storage_dir, files, max_bytes)


def _is_model_file(name: str) -> bool:
    return name in ACCEPTED_NAMES or name.endswith(ACCEPTED_SUFFIXES)


def commit_staged(
    storage_dir: Path, staging: Path, max_bytes: int, device: str = "cpu"
) -> tuple[Path, LoadedModel, bool]:
    """Validate a staged model with the engine, compute what jobs need of it once, and move it
    to its content address.

    Returns (final folder, model opened from it, whether this call stored it: False when the same
    weights were already there). Validation errors remove the staging folder. The weight
    statistics (``weightspace.save_statistics``) and the outputs on the default probes
    (``stored_outputs.save_outputs``, for a model whose config the engine builds), computed on
    ``device``, travel with the files in the same rename, so no job recomputes them; weights
    already stored with theirs are not summarised again. The model returned is opened trusted.
    """
    with _in_use(staging):  # validation and statistics of a large model take a while
        return _commit_staged(storage_dir, staging, max_bytes, device)


DERIVED_FILES = (STATISTICS_FILE, OUTPUTS_FILE)


def _commit_staged(
    storage_dir: Path, staging: Path, max_bytes: int, device: str
) -> tuple[Path, LoadedModel, bool]:
    try:
        model = open_model(staging, staging.name, max_bytes=max_bytes)
        final = storage_dir / "models" / model.sha256
        if not (final / STATISTICS_FILE).is_file():  # weights stored already keep theirs
            save_statistics(model, staging, device)
        if not (final / OUTPUTS_FILE).is_file():
            save_outputs(model, staging, device)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    final.parent.mkdir(parents=True, exist_ok=True)
    (staging / UNCOMMITTED).touch()  # moves with the folder; gone once the row commits
    fresh = True
    try:
        staging.rename(final)
        os.utime(final)  # stored now: the sweeper's age bound counts from here
    except OSError:
        if not final.is_dir():
            shutil.rmtree(staging, ignore_errors=True)
            raise
        # The same weights are already stored; one stored before statistics or outputs existed
        # gets them.
        for derived in DERIVED_FILES:
            if not (final / derived).is_file() and (staging / derived).is_file():
                (final / derived).parent.mkdir(exist_ok=True)
                os.replace(staging / derived, final / derived)
        shutil.rmtree(staging, ignore_errors=True)
        os.utime(final)  # in use again: not stale for the sweeper while this row commits
        fresh = False
    return final, open_trusted(final, model.sha256, model.sha256), fresh


@contextmanager
def _in_use(folder: Path) -> Iterator[None]:
    """Hold a shared lock on ``folder`` (it follows the folder through its rename): the sweeper
    never removes a folder a request is working in, however long that work takes."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


def _remove_unless_in_use(folder: Path) -> bool:
    """Remove ``folder`` unless a request holds it (``_in_use``); whether it was removed."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    try:
        shutil.rmtree(folder, ignore_errors=True)
    finally:
        os.close(fd)
    return True


def mark_committed(folder: Path) -> None:
    """The row naming stored ``folder`` has committed: it is no longer the sweeper's."""
    (folder / UNCOMMITTED).unlink(missing_ok=True)


def remove_stale(
    storage_dir: Path, referenced: Callable[[], set[str]], max_age: float
) -> list[str]:
    """Remove what failed uploads left: staging folders, and stored model folders still marked
    ``UNCOMMITTED`` that no row names (``referenced()``: the SHA-256 of every registered model,
    asked only when there is such a folder), when their last change is more than ``max_age``
    seconds old. A marked folder that a row does name lost only its marker's removal (the
    process stopped right after the commit): its marker goes. Returns the removed folders,
    relative to ``storage_dir``."""
    cutoff = time.time() - max_age

    def old(folders: Iterable[Path]) -> list[Path]:
        # A folder's last change is its newest entry's: an upload still streaming into a file
        # keeps that file's time moving, though the folder's own stays at the file's creation.
        found = []
        for folder in folders:
            try:
                if not folder.is_dir():
                    continue
                times = [folder.stat().st_mtime] + [p.stat().st_mtime for p in folder.iterdir()]
            except FileNotFoundError:  # removed meanwhile
                continue
            if max(times) < cutoff:
                found.append(folder)
        return found

    staging_dir, models_dir = storage_dir / "staging", storage_dir / "models"
    stale = old(staging_dir.iterdir()) if staging_dir.is_dir() else []
    pending = (
        [p for p in models_dir.iterdir() if (p / UNCOMMITTED).exists()]
        if models_dir.is_dir()
        else []
    )
    stored = old(pending)
    if stored:
        names = referenced()
        stale += [folder for folder in stored if folder.name not in names]
        for folder in stored:
            if folder.name in names:
                mark_committed(folder)
    removed = [folder for folder in stale if _remove_unless_in_use(folder)]
    return [str(folder.relative_to(storage_dir)) for folder in removed]
