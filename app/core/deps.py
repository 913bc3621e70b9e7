"""The request dependencies every domain's endpoints share, so that endpoints read like their
signatures. They live in ``core`` rather than ``api`` because the domains' endpoints use them and
a domain never imports ``api``; ``create_app`` fills ``app.state``, which they read.

- ``SessionDep``: one session per request, committed when the endpoint has returned and its
  answer is built (before it is sent, so a failed commit is an error answer, never a success
  that was not saved), rolled back on any error. Services never commit; work they hand on after
  the commit (a job to the workers) is registered with ``app.core.db.after_commit``.
- ``SettingsDep``, ``MetricsDep``: what ``create_app`` put on ``app.state``.
- ``ModelRequestDep``: the body of ``POST /parents`` and ``POST /detect``: a multipart upload of
  a model's files plus text fields, or a JSON object naming a hub model.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, BinaryIO, TypeVar

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile
from starlette.types import Message

from app.core.config import Settings
from app.core.metrics import Metrics
from app.engine.errors import LineageError, ModelTooLarge
from app.engine.model_files import JsonTooDeep, parse_json

FILES_FIELD = "files"
# Room for the multipart framing and small files (config, card) on top of the weights, so the
# body limit refuses only what the model size limit would refuse anyway.
UPLOAD_OVERHEAD_BYTES = 1 << 20
# A JSON body names a hub model in a few fields: 1 MB is far more than any needs, and nesting
# deeper than a few levels is never a request (the parser would recurse on it).
MAX_JSON_BODY_BYTES = 1 << 20
MAX_JSON_BODY_DEPTH = 32
Fields = TypeVar("Fields", bound=BaseModel)


class BodyTooLarge(LineageError):
    """A JSON body above ``MAX_JSON_BODY_BYTES``."""

    code = "request_too_large"
    status = 413


class BodyTooDeep(LineageError):
    """A JSON body nested deeper than ``MAX_JSON_BODY_DEPTH``."""

    code = "json_too_deep"


class UnsupportedMediaType(LineageError):
    """A request body that is neither multipart/form-data nor JSON."""

    code = "unsupported_media_type"
    status = 415


def get_app_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    return request.app.state.settings


def get_db(request: Request) -> Iterator[Session]:
    """A session for this request: commit at the end, roll back on error.

    The commit stands outside the ``try``: what ``after_commit`` hands on runs inside it, and
    when that fails (the broker is down) the data is already durable, so there is nothing to roll
    back; a commit that itself fails is rolled back when the session closes.
    """
    with request.app.state.session_factory() as session:
        try:
            yield session
        except BaseException:
            session.rollback()
            raise
        session.commit()


def get_metrics(request: Request) -> Metrics:
    """The app's Prometheus counters."""
    return request.app.state.metrics


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
# scope="function": the commit runs as soon as the endpoint returns, not after the response went
# out (FastAPI's default for yield dependencies), so the client never sees an unsaved success.
SessionDep = Annotated[Session, Depends(get_db, scope="function")]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


def _invalid(loc: tuple[Any, ...], message: str, kind: str = "value_error") -> dict:
    return {"type": kind, "loc": loc, "msg": message, "input": None}


def _body_errors(exc: ValidationError) -> list[dict]:
    # Located under "body", as FastAPI locates the errors of the bodies it parses itself.
    return [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]


def validate_body(model: type[Fields], data: Any) -> Fields:
    """``data`` as ``model``; a mismatch is a 422 naming each field, like FastAPI's own."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(_body_errors(exc), body=data) from None


@dataclass
class ModelRequest:
    """A model request's body: ``json`` for a JSON body; else the multipart text ``fields`` and
    the uploaded ``files``."""

    json: Any = None
    is_json: bool = False
    fields: dict[str, str] = field(default_factory=dict)
    files: list[UploadFile] = field(default_factory=list)

    def form(self, model: type[Fields]) -> Fields:
        """The text fields as ``model``, checking that files came too (one 422 for both)."""
        errors = []
        try:
            parsed = model.model_validate(self.fields)
        except ValidationError as exc:
            errors = _body_errors(exc)
        if not self.files:
            errors.append(
                _invalid(
                    ("body", FILES_FIELD), "Field required: upload the model's files", "missing"
                )
            )
        if errors:
            raise RequestValidationError(errors)
        return parsed

    def parse(self, form: type[Fields], hub: type[BaseModel]) -> BaseModel:
        """The body as ``hub`` when it is JSON, else the multipart text fields as ``form`` (with
        files required); a mismatch is a 422 naming each field."""
        return validate_body(hub, self.json) if self.is_json else self.form(form)

    def uploads(self) -> list[tuple[str | None, BinaryIO]]:
        """The uploaded files as (file name as the client sent it, readable stream) pairs."""
        return [(upload.filename, upload.file) for upload in self.files]


def limited_body(
    request: Request, max_model_bytes: int, refusal: LineageError | None = None
) -> Request:
    """A view of ``request`` whose body ends in ``ModelTooLarge`` once it is clearly larger than
    any model of at most ``max_model_bytes`` (plus ``UPLOAD_OVERHEAD_BYTES`` of framing), or in
    ``refusal`` once it is larger than ``max_model_bytes`` itself when one is given.

    A declared ``Content-Length`` over the limit is refused before anything is read; a chunked
    body is cut off as it arrives, so an oversized upload never fills the temporary files. (Not
    FastAPI's ``max_body_size``: Starlette answers that one in plain text, not the error shape.)
    """
    if refusal is None:
        limit = max_model_bytes + UPLOAD_OVERHEAD_BYTES
        refusal = ModelTooLarge(
            f"upload is above the limit of {max_model_bytes} bytes (MAX_MODEL_BYTES)"
        )
    else:
        limit = max_model_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise refusal
    received = 0

    async def receive() -> Message:
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise refusal
        return message

    return Request(request.scope, receive)


async def read_json_body(request: Request) -> Any:
    """A JSON body, at most ``MAX_JSON_BODY_BYTES`` (else 413 ``request_too_large``) and nested
    at most ``MAX_JSON_BODY_DEPTH`` deep (else 400 ``json_too_deep``); malformed JSON is a 422."""
    refusal = BodyTooLarge(
        f"JSON body is above the limit of {MAX_JSON_BODY_BYTES} bytes; a JSON request names a "
        "hub model (upload model files as multipart/form-data)"
    )
    body = await limited_body(request, MAX_JSON_BODY_BYTES, refusal).body()
    try:
        return parse_json(body, MAX_JSON_BODY_DEPTH)
    except JsonTooDeep as exc:
        raise BodyTooDeep(f"JSON body is {exc}") from None
    except ValueError as exc:  # json.JSONDecodeError, UnicodeDecodeError
        raise RequestValidationError(
            [_invalid(("body",), f"malformed JSON: {exc}", "json_invalid")]
        ) from None


async def read_model_request(
    request: Request, settings: SettingsDep
) -> AsyncIterator[ModelRequest]:
    """Parse a multipart upload or a JSON body; any other media type is a 415.

    Uploaded files are spooled to temporary files by the multipart parser (never whole in
    memory) and closed when the request is done.
    """
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "application/json" or media_type.endswith("+json"):
        yield ModelRequest(json=await read_json_body(request), is_json=True)
        return
    body_request = limited_body(request, settings.max_model_bytes)
    if media_type != "multipart/form-data":
        raise UnsupportedMediaType(
            f"unsupported content type {media_type or '(none)'!r}: send multipart/form-data "
            "(the model's files in 'files', plus the text fields) or application/json"
        )
    form = await body_request.form()
    try:
        parsed = ModelRequest()
        errors = []
        for key, value in form.multi_items():
            if key == FILES_FIELD:
                if isinstance(value, UploadFile):
                    parsed.files.append(value)
                else:
                    errors.append(_invalid(("body", key), "expected a file, got a text value"))
            elif isinstance(value, UploadFile):
                errors.append(
                    _invalid(("body", key), f"unexpected file; send files in '{FILES_FIELD}'")
                )
            else:
                parsed.fields[key] = value
        if errors:
            raise RequestValidationError(errors)
        yield parsed
    finally:
        await form.close()


ModelRequestDep = Annotated[ModelRequest, Depends(read_model_request)]


def model_request_body(form: type[BaseModel], hub: type[BaseModel]) -> dict:
    """OpenAPI ``requestBody`` of an endpoint taking ``ModelRequestDep``: the multipart fields of
    ``form`` plus ``files``, or the JSON object ``hub`` (for ``openapi_extra``)."""
    form_schema = form.model_json_schema()
    form_schema["properties"][FILES_FIELD] = {
        "type": "array",
        "items": {"type": "string", "format": "binary"},
        "description": (
            "The model's files: model.safetensors (or shards + model.safetensors.index.json), "
            "config.json, optional README.md and adapter_config.json. Pickle files are refused."
        ),
    }
    form_schema["required"] = [*form_schema.get("required", []), FILES_FIELD]
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": form_schema},
                "application/json": {"schema": hub.model_json_schema()},
            },
        }
    }
