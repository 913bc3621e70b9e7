"""Content-addressed storage of model files: ``STORAGE/models/<sha256 of the weights>/``.

An upload is streamed to a private staging folder in chunks (never whole in memory), counted
against the size limit as it arrives, validated by the engine, and only then moved into place
under its weights' SHA-256 with one atomic rename. The same weights stored twice keep the first
copy. Nothing half-written is ever visible under ``models/``: a failed upload leaves no trace.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import BinaryIO

from app.engine.architectures import open_model, open_trusted
from app.engine.errors import ModelTooLarge
from app.engine.model_files import PICKLE_SUFFIXES, LoadedModel, refuse_pickle
from app.engine.weightspace import STATISTICS_FILE, save_statistics
from app.registry.errors import UploadRefused

CHUNK = 1 << 20
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
    storage_dir: Path, staging: Path, max_bytes: int
) -> tuple[Path, LoadedModel, bool]:
    """Validate a staged model with the engine, compute its weight statistics once, and move it
    to its content address.

    Returns (final folder, model opened from it, whether this call stored it: False when the same
    weights were already there). Validation errors remove the staging folder. The statistics
    (``weightspace.save_statistics``) travel with the files in the same rename, so every stored
    model has them and no job recomputes them; weights already stored with theirs are not
    summarised again. The model returned is opened trusted.
    """
    try:
        model = open_model(staging, staging.name, max_bytes=max_bytes)
        final = storage_dir / "models" / model.sha256
        if not (final / STATISTICS_FILE).is_file():  # weights stored already keep theirs
            save_statistics(model, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    final.parent.mkdir(parents=True, exist_ok=True)
    fresh = True
    try:
        staging.rename(final)
    except OSError:
        if not final.is_dir():
            shutil.rmtree(staging, ignore_errors=True)
            raise
        # The same weights are already stored; one stored before statistics existed gets them.
        if not (final / STATISTICS_FILE).is_file():
            (final / STATISTICS_FILE).parent.mkdir(exist_ok=True)
            os.replace(staging / STATISTICS_FILE, final / STATISTICS_FILE)
        shutil.rmtree(staging, ignore_errors=True)
        fresh = False
    return final, open_trusted(final, model.sha256, model.sha256), fresh
