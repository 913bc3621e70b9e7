"""Errors of the catalog, raised where the fault is found."""

from __future__ import annotations

from app.engine.errors import LineageError


class UploadRefused(LineageError):
    """An upload that cannot be a model: no files, odd file names, a file type we never read."""

    code = "upload_refused"


class NameTaken(LineageError):
    """A name already given to other weights."""

    code = "name_taken"
    status = 409


class UnknownModel(LineageError):
    """No registered model has that name."""

    code = "unknown_model"
    status = 404
