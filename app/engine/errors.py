"""Error types of the engine.

Each fault has its own type, raised where it is found; the edges (CLI, HTTP) turn them into a
message and an exit code or status in one place. `code` is the stable machine-readable name used in
`{"error": {"code": ..., "message": ...}}`; `status` is the HTTP status the API answers it with
(400 unless a type says otherwise), carried by the type so that the API's error mapping needs to
know no domain (the command line ignores it).
"""


class LineageError(Exception):
    """Base of every error the engine raises on bad input."""

    code = "lineage_error"
    status = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ModelNotFound(LineageError):
    """The path or name given does not point to a model."""

    code = "model_not_found"


class PickleRefused(LineageError):
    """A pickle-based weight file (.bin, .pt, .pth, .ckpt); never unpickled."""

    code = "pickle_refused"


class NoWeights(LineageError):
    """A model folder without safetensors weights."""

    code = "no_weights"


class CorruptHeader(LineageError):
    """A safetensors header that cannot be read: absurd length, bad JSON, bad entries."""

    code = "corrupt_header"


class TruncatedFile(LineageError):
    """A safetensors file shorter than its header says."""

    code = "truncated_file"


class UnsupportedDtype(LineageError):
    """A tensor dtype the engine cannot compare."""

    code = "unsupported_dtype"


class NonFiniteWeights(LineageError):
    """A weight tensor holding NaN or infinity."""

    code = "non_finite_weights"


class ModelTooLarge(LineageError):
    """Weights above the configured size limit."""

    code = "model_too_large"
    status = 413


class InvalidConfig(LineageError):
    """A config.json that is missing, malformed, or names an unknown architecture."""

    code = "invalid_config"


class ShapeMismatch(LineageError):
    """Weights that do not fit the architecture their config describes."""

    code = "shape_mismatch"


class IncompatibleModels(LineageError):
    """A parent and child that share no comparable architecture."""

    code = "incompatible_models"


class UnknownMethod(LineageError):
    """A scoring method name that is not registered."""

    code = "unknown_method"


class InvalidArgument(LineageError):
    """An argument outside what a function accepts (e.g. an empty candidate list)."""

    code = "invalid_argument"


class RemoteCodeRefused(LineageError):
    """A config that asks ``transformers`` for code from the hub (``auto_map``,
    ``trust_remote_code``, a hub kernel as attention implementation); never imported."""

    code = "remote_code_refused"
