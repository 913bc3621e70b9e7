"""Hub IDs to files: ``org/name[@revision]`` → a pinned commit and a local folder.

Only what the engine reads is ever downloaded: safetensors weights (single or sharded, with
their index), ``config.json``, ``README.md`` and ``adapter_config.json``; pickle files never. The
size of the weights is checked against the limit before anything is fetched. ``huggingface_hub``
honours ``HF_TOKEN``, ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and the cache location
(``HF_HUB_CACHE``/``HF_HOME``); offline, a model is served from the cache or refused clearly.

Every request to the hub has connect and read timeouts (``HUB_CONNECT_TIMEOUT_S``,
``HUB_READ_TIMEOUT_S``; huggingface_hub sends some with none), and every way a hub call fails is
one of the errors below, never a traceback: an unreachable, silent or failing hub is
``hub_offline`` (503). Resolution blocks its thread: the endpoints that call it are plain ``def``
endpoints, which FastAPI runs in its thread pool, away from the event loop.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path

from app.engine.errors import LineageError, ModelTooLarge

WANTED = [
    "*.safetensors",
    "model.safetensors.index.json",
    "config.json",
    "README.md",
    "adapter_config.json",
]
# org/name (or a legacy bare name such as gpt2), optionally @revision.
# Seconds to open a connection to the hub, and to wait for each read (or write) once open.
HUB_CONNECT_TIMEOUT_S = 10.0
HUB_READ_TIMEOUT_S = 30.0
_hook_lock = threading.Lock()
HUB_REFERENCE = re.compile(
    r"^(?P<repo>(?:[A-Za-z0-9][\w.-]*/)?[\w.-]+)(?:@(?P<revision>[\w./-]+))?$"
)


class HubError(LineageError):
    """A hub model that cannot be had: unknown, gated, no safetensors, offline without cache."""

    code = "hub_error"


class UnknownHubModel(HubError):
    code = "hub_unknown_model"
    status = 404


class GatedHubModel(HubError):
    code = "hub_gated"
    status = 403


class HubOffline(HubError):
    code = "hub_offline"
    status = 503


class NoSafetensors(HubError):
    code = "hub_no_safetensors"


@dataclass(frozen=True)
class HubModel:
    """A resolved hub model: its ID, the commit it was pinned to, and the local files."""

    hub_id: str
    revision: str
    folder: Path


def parse_reference(reference: str, revision: str | None = None) -> tuple[str, str]:
    """(repo id, revision) from ``org/name[@revision]``; ``InvalidHubId`` when malformed."""
    match = HUB_REFERENCE.match(reference.strip())
    if match is None:
        raise HubError(f"{reference!r} is not a hub ID (expected org/name or org/name@revision)")
    return match["repo"], revision or match["revision"] or "main"


def is_hub_id(text: str) -> bool:
    """Whether ``text`` is written as an ``org/name`` hub ID (no revision)."""
    match = HUB_REFERENCE.match(text)
    return "/" in text and match is not None and match["revision"] is None


def looks_like_hub_id(text: str) -> bool:
    """Whether ``text`` is an ``org/name`` hub ID rather than a path that exists here."""
    return "/" in text and HUB_REFERENCE.match(text) is not None and not Path(text).exists()


def _bound_timeouts(request) -> None:
    """Request hook of huggingface_hub's HTTP client: fill in the timeouts a request was sent
    without (``timeout=None`` there means "wait for ever")."""
    timeout = dict(request.extensions.get("timeout") or {})
    for key, bound in (
        ("connect", HUB_CONNECT_TIMEOUT_S),
        ("read", HUB_READ_TIMEOUT_S),
        ("write", HUB_READ_TIMEOUT_S),
        ("pool", HUB_CONNECT_TIMEOUT_S),
    ):
        if timeout.get(key) is None:
            timeout[key] = bound
    request.extensions = {**request.extensions, "timeout": timeout}


def _install_timeouts() -> None:
    """Add ``_bound_timeouts`` to the client huggingface_hub shares between its calls (once;
    again if it made a new client). A hook, read by the transport when it sends, rather than a
    client of our own: huggingface_hub's own hooks (offline mode, request ids) stay in place."""
    from huggingface_hub import get_session

    session = get_session()
    with _hook_lock:
        hooks = session.event_hooks
        if _bound_timeouts not in hooks["request"]:
            session.event_hooks = {**hooks, "request": [*hooks["request"], _bound_timeouts]}


def _unreachable_errors() -> tuple[type[BaseException], ...]:
    """The exception types of a hub that cannot be reached or does not answer, for whichever
    HTTP client this huggingface_hub uses (httpx2, httpx or requests)."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    found: list[type[BaseException]] = [LocalEntryNotFoundError, OfflineModeIsEnabled]
    for module, name in (
        ("httpx2", "TransportError"),
        ("httpx", "TransportError"),
        ("requests", "ConnectionError"),
        ("requests", "Timeout"),
    ):
        try:
            found.append(getattr(__import__(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def resolve(
    reference: str,
    revision: str | None = None,
    *,
    max_bytes: int,
    cache_dir: Path | None = None,
    offline: bool | None = None,
) -> HubModel:
    """Pin ``reference`` to a commit and bring its model files into the cache."""
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import (
        DisabledRepoError,
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo, revision = parse_reference(reference, revision)
    offline = constants.HF_HUB_OFFLINE if offline is None else offline
    try:
        if not offline:
            _install_timeouts()
            info = HfApi().model_info(repo, revision=revision, files_metadata=True)
            weights = [s for s in info.siblings or [] if s.rfilename.endswith(".safetensors")]
            if not weights:
                raise NoSafetensors(f"{repo}@{revision} has no safetensors weights")
            total = sum(s.size or 0 for s in weights)
            if total > max_bytes:
                raise ModelTooLarge(f"{repo}: weights are {total} bytes, above {max_bytes}")
            revision = info.sha or revision
        folder = Path(
            snapshot_download(
                repo,
                revision=revision,
                allow_patterns=WANTED,
                cache_dir=cache_dir,
                local_files_only=offline,
            )
        )
    except GatedRepoError:
        raise GatedHubModel(
            f"{repo} is gated: accept its terms on the hub and set HF_TOKEN"
        ) from None
    except RepositoryNotFoundError:
        raise UnknownHubModel(f"no hub model {repo!r} (or it is private: set HF_TOKEN)") from None
    except DisabledRepoError:
        raise UnknownHubModel(f"{repo} has been disabled on the hub") from None
    except RevisionNotFoundError:
        raise UnknownHubModel(f"{repo} has no revision {revision!r}") from None
    except HFValidationError as exc:
        raise HubError(f"{reference!r} is not a hub ID ({exc})") from None
    except _unreachable_errors() as exc:
        raise HubOffline(
            f"{repo}@{revision} is not in the local cache and the hub cannot be reached "
            f"(HF_HUB_OFFLINE is set, there is no network, or the hub did not answer: "
            f"{type(exc).__name__})"
        ) from None
    except HfHubHTTPError as exc:  # 5xx, 429...: the hub is there but does not serve it now
        status = getattr(getattr(exc, "response", None), "status_code", None)
        raise HubOffline(
            f"the hub answered {status or 'an error'} for {repo}@{revision}; try again later"
        ) from None
    if not any(folder.glob("*.safetensors")):
        raise NoSafetensors(f"{repo}@{revision} has no safetensors weights in {folder}")
    return HubModel(repo, folder.name, folder)


def resolve_with_settings(settings, reference: str, revision: str | None = None) -> HubModel:
    """``resolve`` with the service's settings (``max_model_bytes``, ``hf_hub_cache``,
    ``hf_hub_offline``; offline unset defers to ``HF_HUB_OFFLINE``)."""
    return resolve(
        reference,
        revision,
        max_bytes=settings.max_model_bytes,
        cache_dir=settings.hf_hub_cache,
        offline=settings.hf_hub_offline or None,
    )
