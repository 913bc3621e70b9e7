"""Loading models from safetensors, safely.

A model is a folder (``model.safetensors`` or shards with ``model.safetensors.index.json``, plus
``config.json``) or a single ``.safetensors`` file whose header ``__metadata__["config"]`` holds the
config as JSON. Weights are read only from safetensors, lazily; pickle formats are refused by
name and never opened.

Every header is checked as ``safe_open`` would (lengths, dtypes, shapes, byte ranges that tile the
data section), so that a bad file gets an error that says what is wrong (absurd header length,
truncated data, unknown dtype) rather than a library traceback. Tensors are then read with
positioned reads (``os.preadv``) of their byte range, whole or a block of elements at a time
(``LazyWeights.read_block``): a caller holds only the tensors or blocks it asked for, and no
memory-mapped page of a multi-gigabyte file is counted against the process.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import struct
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from app.engine.errors import (
    CorruptHeader,
    InvalidConfig,
    ModelNotFound,
    ModelTooLarge,
    NonFiniteWeights,
    NoWeights,
    PickleRefused,
    TruncatedFile,
    UnsupportedDtype,
)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
# safetensors itself refuses headers above 100 MB; we say so before it does.
MAX_HEADER_BYTES = 100 * 1024 * 1024
# How deep a header, config or index may nest: real ones nest 2 to 5 levels. A limit well under
# Python's recursion limit, so that neither the parser nor any walk over the parsed value recurses
# without end.
MAX_JSON_DEPTH = 64
DEFAULT_MAX_MODEL_BYTES = 20 * 1024**3

# Bytes per element for every dtype safetensors writes.
DTYPE_SIZES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U64": 8,
    "U32": 4,
    "U16": 2,
    "U8": 1,
    "BOOL": 1,
}
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
TORCH_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U64": torch.uint64,
    "U32": torch.uint32,
    "U16": torch.uint16,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class TensorInfo:
    """One header entry: where a tensor lives and what it is."""

    file: Path
    dtype: str
    shape: tuple[int, ...]
    # Where the tensor's bytes start in ``file`` (header included).
    offset: int = 0

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class JsonTooDeep(ValueError):
    """JSON nested deeper than the limit ``parse_json`` was given."""


def json_depth(value: object) -> int:
    """How deep a parsed JSON value nests (a scalar is 0, ``[]`` is 1), without recursing."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth + 1)
            stack.extend((child, depth + 1) for child in item)
    return deepest


def parse_json(text: str | bytes, max_depth: int = MAX_JSON_DEPTH) -> object:
    """``json.loads`` with a nesting limit: ``JsonTooDeep`` for a value nested deeper than
    ``max_depth`` (which the parser itself would meet as a ``RecursionError`` a few hundred levels
    further down), ``json.JSONDecodeError`` or ``UnicodeDecodeError`` (both ``ValueError``) for
    text that is not JSON."""
    try:
        value = json.loads(text)
    except RecursionError:
        value = None
        deep = True
    else:
        deep = json_depth(value) > max_depth
    if deep:
        raise JsonTooDeep(f"nested deeper than {max_depth} levels")
    return value


def refuse_pickle(path: Path) -> None:
    """Refuse a pickle-based weight file by its name alone; it is never opened."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise PickleRefused(
            f"{path.name}: pickle-based weights are refused (they can run code when loaded); "
            "convert the model to safetensors"
        )


def read_safetensors_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Read and validate one safetensors header; return (tensors, metadata).

    Checks the 8-byte length prefix against the file size, the JSON, every entry's dtype and shape,
    that each entry's byte range matches its shape and lies inside the file.
    """
    path = Path(path)
    refuse_pickle(path)
    size = path.stat().st_size
    if size < 8:
        raise TruncatedFile(f"{path.name}: {size} bytes is too short to be a safetensors file")
    with path.open("rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        if header_len > MAX_HEADER_BYTES:
            raise CorruptHeader(
                f"{path.name}: header length {header_len} bytes is absurd "
                f"(limit {MAX_HEADER_BYTES}); not a safetensors file"
            )
        if 8 + header_len > size:
            raise TruncatedFile(
                f"{path.name}: header says {header_len} bytes but the file has {size - 8}"
            )
        raw = fh.read(header_len)
    try:
        header = parse_json(raw.decode("utf-8"))
    except JsonTooDeep as exc:
        raise CorruptHeader(f"{path.name}: header is {exc}; not a safetensors file") from None
    except ValueError as exc:  # json.JSONDecodeError, UnicodeDecodeError
        raise CorruptHeader(f"{path.name}: header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise CorruptHeader(f"{path.name}: header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CorruptHeader(f"{path.name}: __metadata__ is not an object of strings")
    data_len = size - 8 - header_len
    tensors: dict[str, TensorInfo] = {}
    spans = []
    for name, entry in header.items():
        tensors[name] = _check_entry(path, name, entry, data_len, 8 + header_len)
        spans.append((tuple(entry["data_offsets"]), name))
    # Like safe_open: the byte ranges must tile the data section, no overlap, gap or leftover.
    end = 0
    for (start, stop), name in sorted(spans):
        if start != end:
            raise CorruptHeader(
                f"{path.name}: tensor {name!r} starts at byte {start} of the data section where "
                f"{end} was expected (overlapping or gapped data_offsets)"
            )
        end = stop
    if end != data_len:
        raise CorruptHeader(
            f"{path.name}: {data_len - end} bytes after the last tensor; not a safetensors file"
        )
    return tensors, {str(k): str(v) for k, v in metadata.items()}


def _is_int(value: object) -> bool:
    """An integer as JSON means it (Python's bools are ints; safetensors rejects them)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _check_entry(path: Path, name: str, entry: object, data_len: int, start: int) -> TensorInfo:
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise CorruptHeader(f"{path.name}: entry {name!r} lacks dtype, shape or data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPE_SIZES:
        raise UnsupportedDtype(f"{path.name}: tensor {name!r} has unsupported dtype {dtype!r}")
    if not (isinstance(shape, list) and all(_is_int(d) and d >= 0 for d in shape)):
        raise CorruptHeader(f"{path.name}: tensor {name!r} has invalid shape {shape!r}")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(_is_int(o) for o in offsets)
        and 0 <= offsets[0] <= offsets[1]
    ):
        raise CorruptHeader(f"{path.name}: tensor {name!r} has invalid data_offsets {offsets!r}")
    expected = math.prod(shape) * DTYPE_SIZES[dtype]
    if offsets[1] - offsets[0] != expected:
        raise CorruptHeader(
            f"{path.name}: tensor {name!r} of shape {shape} {dtype} needs {expected} bytes "
            f"but its offsets span {offsets[1] - offsets[0]}"
        )
    if offsets[1] > data_len:
        raise TruncatedFile(
            f"{path.name}: tensor {name!r} ends at byte {offsets[1]} of the data section "
            f"but the file holds only {data_len}; the file is truncated"
        )
    return TensorInfo(file=path, dtype=dtype, shape=tuple(shape), offset=start + offsets[0])


# Tensors of at least this many bytes are memory-mapped rather than read, where ``mapped``.
MAP_MIN_BYTES = 1 << 20


class LazyWeights(Mapping[str, torch.Tensor]):
    """A read-only mapping name → tensor over one or more safetensors files.

    Tensors are read on access, each with a positioned read of its own bytes, so opening a model
    costs only its headers, and a block of a tensor (``read_block``) costs only that block.
    Values come back in their stored dtype on the CPU, each a fresh tensor the caller owns.

    With ``mapped`` (files that are never rewritten: the service's content-addressed storage),
    a tensor of ``MAP_MIN_BYTES`` or more is instead a private copy-on-write memory map of its
    bytes: nothing is read, copied or allocated until it is used, its pages are the page
    cache's, and writing to it changes that tensor's own copy only, never the file or another
    value. (A file truncated while mapped would fault on access; stored files never are.)
    """

    def __init__(self, infos: dict[str, TensorInfo], mapped: bool = False):
        self.infos = infos
        self.mapped = mapped
        self._files: dict[Path, object] = {}
        self._lock = threading.Lock()

    def _fileno(self, file: Path) -> int:
        with self._lock:  # a streaming reader may prefetch from another thread
            return self._open(file)

    def _open(self, file: Path) -> int:
        if file not in self._files:
            try:
                self._files[file] = file.open("rb", buffering=0)
            except OSError as exc:
                raise NoWeights(f"{file.name}: cannot be read ({exc.strerror or exc})") from None
        return self._files[file].fileno()

    def read_block(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Elements ``start:stop`` of tensor ``name`` flattened (row-major), stored dtype."""
        out = torch.empty(max(stop - start, 0), dtype=TORCH_DTYPES[self.infos[name].dtype])
        return self.read_into(name, start, stop, out)

    def read_into(self, name: str, start: int, stop: int, out: torch.Tensor) -> torch.Tensor:
        """Read elements ``start:stop`` of tensor ``name`` (flattened, row-major) straight into
        ``out``: a contiguous CPU tensor of the stored dtype and ``stop - start`` elements, which
        a streaming caller reuses from block to block (no allocation, no copy). Returns ``out``."""
        info = self.infos[name]
        if out.dtype != TORCH_DTYPES[info.dtype] or out.numel() != stop - start:
            raise ValueError(
                f"read_into: {name!r} needs {stop - start} elements of {info.dtype}, "
                f"got {out.numel()} of {out.dtype}"
            )
        if not out.is_contiguous() or out.device.type != "cpu":
            raise ValueError("read_into: the target must be a contiguous CPU tensor")
        if not out.numel():
            return out
        size = DTYPE_SIZES[info.dtype]
        view = memoryview(out.view(torch.uint8).numpy()).cast("B")
        position = info.offset + start * size
        fd = self._fileno(info.file)
        while view:
            got = os.preadv(fd, [view], position)
            if got == 0:
                raise TruncatedFile(f"{info.file.name}: tensor {name!r} ends past the file's end")
            view, position = view[got:], position + got
        return out

    def __getitem__(self, name: str) -> torch.Tensor:
        info = self.infos[name]
        mapped = self._map(name) if self.mapped else None
        if mapped is not None:
            return mapped.reshape(info.shape)
        return self.read_block(name, 0, info.numel).reshape(info.shape)

    def _map(self, name: str) -> torch.Tensor | None:
        """Tensor ``name`` (flattened) as a copy-on-write map of the file, or None where it is
        small, not aligned to its element size, or cannot be mapped (then it is read)."""
        info = self.infos[name]
        size = DTYPE_SIZES[info.dtype]
        length = info.numel * size
        if length < MAP_MIN_BYTES or info.offset % size or sys.byteorder != "little":
            return None
        start = info.offset - info.offset % mmap.ALLOCATIONGRANULARITY
        try:
            mapping = mmap.mmap(
                self._fileno(info.file),
                info.offset + length - start,
                access=mmap.ACCESS_COPY,
                offset=start,
            )
        except (OSError, ValueError):
            return None
        # The tensor holds the map (released with the tensor's storage).
        return torch.frombuffer(
            mapping, dtype=TORCH_DTYPES[info.dtype], count=info.numel, offset=info.offset - start
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self.infos)

    def __len__(self) -> int:
        return len(self.infos)


@dataclass
class LoadedModel:
    """A model read from disk: its weights (lazy), config, identity and architecture signature."""

    name: str
    path: Path
    files: list[Path]
    config: dict | None
    weights: LazyWeights
    sha256: str
    num_bytes: int
    _float_cache: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    # Per-model derived values (spectra, probes outputs) that scoring reuses across candidates.
    cache: dict = field(default_factory=dict, repr=False)

    @property
    def signature(self) -> dict[str, tuple[int, ...]]:
        """Tensor names and shapes: what makes two models comparable."""
        return {name: info.shape for name, info in self.weights.infos.items()}

    @property
    def model_type(self) -> str | None:
        return (self.config or {}).get("model_type")

    def float_tensors(self) -> dict[str, torch.Tensor]:
        """Every floating-point tensor as float32 (fp16/bf16 are compared in float32); cached."""
        if self._float_cache is None:
            self._float_cache = {
                name: self.weights[name].to(torch.float32)
                for name, info in self.weights.infos.items()
                if info.is_float
            }
        return self._float_cache

    def cached_float_tensors(self) -> dict[str, torch.Tensor] | None:
        """``float_tensors()`` if it was already built, else None (nothing is read)."""
        return self._float_cache

    @cached_property
    def num_parameters(self) -> int:
        return sum(math.prod(info.shape) for info in self.weights.infos.values())


def _weight_files(path: Path) -> tuple[list[Path], Path | None, dict[str, str] | None]:
    """The safetensors files of a model path, its config.json if any, and the shard index's
    weight map (tensor name → shard file) when the weights are sharded."""
    if not path.exists():
        raise ModelNotFound(f"{path.name}: no such file or folder")
    if path.is_file():
        refuse_pickle(path)
        if path.suffix.lower() != ".safetensors":
            raise NoWeights(f"{path.name}: not a .safetensors file or a model folder")
        return [path], None, None
    config = path / "config.json"
    config = config if config.is_file() else None
    index = path / INDEX_NAME
    if index.is_file():
        try:
            weight_map = parse_json(index.read_text(encoding="utf-8"))["weight_map"]
            shard_names = sorted(set(weight_map.values()))
            if not all(isinstance(shard, str) for shard in shard_names):
                raise TypeError("shard names must be strings")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # ValueError: JSON, UTF-8
            raise CorruptHeader(f"{index.name}: not a valid shard index ({exc})") from None
        files = []
        for shard in shard_names:
            try:
                shard_path = (path / shard).resolve()
            except (ValueError, OSError):  # a NUL byte, a link loop
                raise CorruptHeader(f"{index.name}: shard {shard!r} is not a file name") from None
            if path.resolve() not in shard_path.parents or not shard_path.is_file():
                raise TruncatedFile(f"{index.name}: shard {shard!r} is missing from the folder")
            files.append(shard_path)
        return files, config, weight_map
    if (path / SINGLE_NAME).is_file():
        return [path / SINGLE_NAME], config, None
    found = sorted(path.glob("*.safetensors"))
    if len(found) == 1:
        return found, config, None
    if len(found) > 1:
        raise NoWeights(f"{path.name}: several .safetensors files and no {INDEX_NAME} to join them")
    pickles = sorted(p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise PickleRefused(
            f"{path.name}: only pickle-based weights found ({', '.join(pickles)}); they are "
            "refused (they can run code when loaded); provide model.safetensors"
        )
    raise NoWeights(f"{path.name}: no model.safetensors in this folder")


def _sha256(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for file in files:
        with file.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _parse_config(text: str, where: str) -> dict:
    try:
        config = parse_json(text)
    except JsonTooDeep as exc:
        raise InvalidConfig(f"{where}: {exc}") from None
    except ValueError as exc:  # json.JSONDecodeError
        raise InvalidConfig(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise InvalidConfig(f"{where}: must be a JSON object")
    return config


def load_model(
    source: str | Path,
    name: str | None = None,
    *,
    max_bytes: int = DEFAULT_MAX_MODEL_BYTES,
    check_finite: bool = True,
    sha256: str | None = None,
    mapped: bool = False,
) -> LoadedModel:
    """Open a model folder or ``.safetensors`` file and validate it.

    Validation: headers (see ``read_safetensors_header``), shards named in the index all present
    and agreeing with it, total size under ``max_bytes``, and, with ``check_finite``, every float
    tensor free of NaN and infinity. Identity is the SHA-256 of the weight files' bytes, shards in
    sorted order; a caller that already knows it (content-addressed storage, whose folder is named
    by it) passes ``sha256`` and the files are not read again to hash them. ``mapped``: large
    tensors are memory-mapped, not read (``LazyWeights``); only for files never rewritten.
    """
    path = Path(source)
    files, config_path, weight_map = _weight_files(path)
    num_bytes = sum(f.stat().st_size for f in files)
    if num_bytes > max_bytes:
        raise ModelTooLarge(
            f"{path.name}: weights are {num_bytes} bytes, above the limit of {max_bytes}"
        )
    infos: dict[str, TensorInfo] = {}
    metadata: dict[str, str] = {}
    for file in files:
        file_infos, file_meta = read_safetensors_header(file)
        duplicated = infos.keys() & file_infos.keys()
        if duplicated:
            raise CorruptHeader(f"{file.name}: tensors also in another shard: {sorted(duplicated)}")
        infos.update(file_infos)
        metadata = metadata or file_meta
    if weight_map is not None:
        for tensor_name, shard in weight_map.items():
            info = infos.get(tensor_name)
            if info is None or info.file != (path / shard).resolve():
                raise CorruptHeader(
                    f"{INDEX_NAME}: tensor {tensor_name!r} is not in shard {shard!r}"
                )
    if not infos:
        raise NoWeights(f"{path.name}: the weights file holds no tensors")
    # A model whose every tensor is empty (or integer) has nothing any method compares: as a
    # catalog parent it would be a candidate that matches everything and nothing.
    if not any(info.is_float and info.numel > 0 for info in infos.values()):
        raise NoWeights(
            f"{path.name}: the weights hold no values to compare (every tensor is empty or "
            "not floating-point)"
        )
    if config_path is not None:
        try:
            text = config_path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidConfig(f"{config_path.name}: not UTF-8 text ({exc})") from None
        config = _parse_config(text, config_path.name)
    elif "config" in metadata:
        config = _parse_config(metadata["config"], f"{files[0].name} __metadata__['config']")
    else:
        config = None
    weights = LazyWeights(infos, mapped=mapped)
    if check_finite:
        for tensor_name, info in infos.items():
            if not info.is_float:
                continue
            tensor = weights[tensor_name]
            if tensor.element_size() == 1:  # float8: torch has no isfinite kernel for it
                tensor = tensor.to(torch.float32)
            if not torch.isfinite(tensor).all():
                raise NonFiniteWeights(
                    f"{path.name}: tensor {tensor_name!r} holds NaN or infinite values"
                )
    return LoadedModel(
        name=name if name is not None else str(source),
        path=path,
        files=files,
        config=config,
        weights=weights,
        sha256=sha256 if sha256 is not None else _sha256(files),
        num_bytes=num_bytes,
    )


def save_model(
    folder: str | Path,
    state: Mapping[str, torch.Tensor],
    config: dict | None,
    *,
    card: str | None = None,
) -> Path:
    """Write a model folder: ``model.safetensors`` (+ ``config.json``, optional ``README.md``).

    Files are written to temporary names and renamed, so a crash leaves no half-written model.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    tmp = folder / f".{SINGLE_NAME}.tmp"
    save_file(tensors, str(tmp))
    tmp.replace(folder / SINGLE_NAME)
    if config is not None:
        (folder / ".config.json.tmp").write_text(json.dumps(config, indent=2) + "\n")
        (folder / ".config.json.tmp").replace(folder / "config.json")
    if card is not None:
        (folder / "README.md").write_text(card)
    return folder
