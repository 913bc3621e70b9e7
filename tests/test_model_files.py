"""Loading and validating model files: real small files written by the tests, every refusal typed.

Malformed files are hand-written byte by byte (8-byte little-endian header length, JSON header,
data) so that each test breaks exactly one thing.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import json
import math
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from app.engine.architectures import open_model
from app.engine.errors import (
    CorruptHeader,
    InvalidConfig,
    LineageError,
    ModelNotFound,
    ModelTooLarge,
    NonFiniteWeights,
    NoWeights,
    PickleRefused,
    ShapeMismatch,
    TruncatedFile,
    UnsupportedDtype,
)
from app.engine.model_files import load_model, save_model
from tests.factories import TINY_MLP_CONFIG as MLP_CONFIG
from tests.factories import TINY_MLP_SHAPES as MLP_SHAPES
from tests.factories import tiny_mlp_state as mlp_state

# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def write_raw(path: Path, header: object, data: bytes = b"", *, length: int | None = None) -> Path:
    """A safetensors-shaped file: ``<Q`` header length (``length`` overrides it), header, data."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    prefix = struct.pack("<Q", len(raw) if length is None else length)
    path.write_bytes(prefix + raw + data)
    return path


def f32_entry(shape: list[int], start: int = 0) -> dict:
    """A header entry for a float32 tensor of ``shape`` starting at ``start``."""
    return {"dtype": "F32", "shape": shape, "data_offsets": [start, start + 4 * math.prod(shape)]}


def pickle_payload(marker: Path) -> bytes:
    """Protocol-0 pickle bytes that, if ever unpickled, run ``open(marker, "w")`` (creating it).

    Hand-written opcodes: GLOBAL builtins.open, MARK, two unicode strings, TUPLE, REDUCE, STOP.
    The tests only write these bytes; nothing here unpickles them.
    """
    return f"cbuiltins\nopen\n(V{marker}\nVw\ntR.".encode()


@pytest.fixture
def mlp_folder(tmp_path) -> Path:
    return save_model(tmp_path / "mlp", mlp_state(0), MLP_CONFIG)


# ---------------------------------------------------------------------------------------------
# Folders, signature and identity
# ---------------------------------------------------------------------------------------------


def test_model_folder_loads_with_config_and_weights(mlp_folder):
    model = load_model(mlp_folder)
    assert model.config == MLP_CONFIG
    assert model.model_type == "lineage-mlp"
    assert model.files == [mlp_folder / "model.safetensors"]
    assert model.name == str(mlp_folder)
    expected = mlp_state(0)
    assert set(model.weights) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(model.weights[name], tensor)
    assert model.num_parameters == sum(math.prod(s) for s in MLP_SHAPES.values())


def test_signature_lists_names_and_shapes(mlp_folder):
    assert load_model(mlp_folder).signature == MLP_SHAPES


def test_sha256_is_the_hash_of_the_file_bytes(mlp_folder):
    model = load_model(mlp_folder)
    data = (mlp_folder / "model.safetensors").read_bytes()
    assert model.sha256 == hashlib.sha256(data).hexdigest()
    assert model.num_bytes == len(data)


def test_same_weights_same_sha256_different_weights_differ(tmp_path):
    a = load_model(save_model(tmp_path / "a", mlp_state(0), MLP_CONFIG))
    a_copy = load_model(save_model(tmp_path / "a-copy", mlp_state(0), MLP_CONFIG))
    b = load_model(save_model(tmp_path / "b", mlp_state(1), MLP_CONFIG))
    assert a.sha256 == a_copy.sha256
    assert a.sha256 != b.sha256


def test_open_model_accepts_valid_mlp(mlp_folder):
    model = open_model(mlp_folder, "given-name")
    assert model.name == "given-name"
    assert model.signature == MLP_SHAPES


def test_single_file_with_config_in_metadata(tmp_path):
    path = tmp_path / "single.safetensors"
    save_file(mlp_state(2), str(path), metadata={"config": json.dumps(MLP_CONFIG)})
    model = open_model(path)
    assert model.config == MLP_CONFIG
    assert model.files == [path]
    assert model.signature == MLP_SHAPES
    assert torch.equal(model.weights["layers.1.bias"], mlp_state(2)["layers.1.bias"])


def test_single_file_with_invalid_config_in_metadata(tmp_path):
    path = tmp_path / "single.safetensors"
    save_file(mlp_state(2), str(path), metadata={"config": "{not json"})
    with pytest.raises(InvalidConfig, match=r"__metadata__\['config'\].*not valid JSON"):
        load_model(path)


# ---------------------------------------------------------------------------------------------
# Shards
# ---------------------------------------------------------------------------------------------


def write_sharded(folder: Path, state: dict[str, torch.Tensor]) -> dict[str, str]:
    """Split ``state`` over two shards plus ``model.safetensors.index.json``; return weight_map."""
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(state)
    shards = {
        "model-00001-of-00002.safetensors": names[: len(names) // 2],
        "model-00002-of-00002.safetensors": names[len(names) // 2 :],
    }
    weight_map = {}
    for shard, shard_names in shards.items():
        save_file({n: state[n] for n in shard_names}, str(folder / shard))
        weight_map.update(dict.fromkeys(shard_names, shard))
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "config.json").write_text(json.dumps(MLP_CONFIG))
    return weight_map


def test_sharded_weights_load_every_tensor(tmp_path):
    state = mlp_state(3)
    weight_map = write_sharded(tmp_path / "sharded", state)
    model = open_model(tmp_path / "sharded")
    assert len(set(weight_map.values())) == 2
    assert [f.name for f in model.files] == sorted(set(weight_map.values()))
    assert model.signature == MLP_SHAPES
    for name, tensor in state.items():
        assert torch.equal(model.weights[name], tensor)
        assert model.weights.infos[name].file.name == weight_map[name]
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in model.files)).hexdigest()
    assert model.sha256 == digest


def test_shard_missing_from_disk_is_truncated(tmp_path):
    weight_map = write_sharded(tmp_path / "sharded", mlp_state(3))
    gone = sorted(set(weight_map.values()))[1]
    (tmp_path / "sharded" / gone).unlink()
    with pytest.raises(TruncatedFile, match=f"shard '{gone}' is missing"):
        load_model(tmp_path / "sharded")


def test_shard_outside_the_folder_is_refused(tmp_path):
    folder = tmp_path / "sharded"
    write_sharded(folder, mlp_state(3))
    save_file({"x": torch.zeros(2)}, str(tmp_path / "outside.safetensors"))
    index = {"metadata": {}, "weight_map": {"x": "../outside.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(TruncatedFile, match="outside.safetensors"):
        load_model(folder)


def test_index_that_misplaces_a_tensor_is_refused(tmp_path):
    folder = tmp_path / "sharded"
    weight_map = write_sharded(folder, mlp_state(3))
    moved = next(iter(weight_map))
    other = next(s for s in sorted(set(weight_map.values())) if s != weight_map[moved])
    index = {"metadata": {}, "weight_map": {**weight_map, moved: other}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CorruptHeader, match=f"tensor '{moved}' is not in shard"):
        load_model(folder)


def test_index_naming_an_absent_tensor_is_refused(tmp_path):
    folder = tmp_path / "sharded"
    weight_map = write_sharded(folder, mlp_state(3))
    index = {"metadata": {}, "weight_map": {**weight_map, "ghost": next(iter(weight_map.values()))}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CorruptHeader, match="'ghost' is not in shard"):
        load_model(folder)


def test_several_unindexed_files_beside_a_pickle_say_so(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("a.safetensors", "b.safetensors"):
        save_file({"x": torch.zeros(2)}, str(folder / name))
    (folder / "pytorch_model.bin").write_bytes(b"not opened")
    with pytest.raises(NoWeights, match="several .safetensors files"):
        load_model(folder)


@pytest.mark.parametrize(
    "content",
    [
        b"{ this is not json",
        b'{"metadata": {}}',
        b'{"weight_map": ["model-00001-of-00002.safetensors"]}',
        b'{"weight_map": {"layers.0.bias": 7}}',
        b"[]",
        b"\xff\xfe\x00 not utf-8",
    ],
    ids=["not-json", "no-weight-map", "weight-map-list", "shard-not-string", "array", "binary"],
)
def test_malformed_index_is_corrupt_header(tmp_path, content):
    folder = tmp_path / "sharded"
    write_sharded(folder, mlp_state(3))
    (folder / "model.safetensors.index.json").write_bytes(content)
    with pytest.raises(
        CorruptHeader, match="model.safetensors.index.json: not a valid shard index"
    ):
        load_model(folder)


# ---------------------------------------------------------------------------------------------
# Pickle formats: refused by name, never opened
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def no_file_opened(monkeypatch):
    """Fail the test if anything opens a path in the returned set (or calls torch.load)."""
    forbidden: set[Path] = set()
    real_open, real_path_open = builtins.open, Path.open

    def check(file):
        if isinstance(file, (str, Path)) and Path(file).resolve() in forbidden:
            raise AssertionError(f"{file} was opened")

    def spy_open(file, *args, **kwargs):
        check(file)
        return real_open(file, *args, **kwargs)

    def spy_path_open(self, *args, **kwargs):
        check(self)
        return real_path_open(self, *args, **kwargs)

    def no_torch_load(*args, **kwargs):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(io, "open", spy_open)
    monkeypatch.setattr(Path, "open", spy_path_open)
    monkeypatch.setattr(torch, "load", no_torch_load)
    return forbidden


@pytest.mark.parametrize("file_name", ["model.bin", "model.pt", "x.ckpt", "weights.pth"])
def test_pickle_file_given_directly_is_refused_unopened(tmp_path, no_file_opened, file_name):
    marker = tmp_path / "unpickled.marker"
    path = tmp_path / file_name
    path.write_bytes(pickle_payload(marker))
    no_file_opened.add(path.resolve())
    with pytest.raises(PickleRefused, match=f"{file_name}: pickle-based weights are refused"):
        load_model(path)
    with pytest.raises(PickleRefused, match="convert the model to safetensors"):
        open_model(path)
    assert not marker.exists()


def test_garbage_pt_file_is_refused_not_parsed(tmp_path):
    """Garbage would make an unpickler or parser fail differently: the refusal comes first."""
    path = tmp_path / "model.pt"
    path.write_bytes(b"\x00\x01garbage, neither pickle nor zip\xff" * 10)
    with pytest.raises(PickleRefused, match="model.pt"):
        load_model(path)


def test_folder_with_only_pytorch_model_bin_is_refused(tmp_path, no_file_opened):
    marker = tmp_path / "unpickled.marker"
    folder = tmp_path / "hf-model"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes(pickle_payload(marker))
    (folder / "config.json").write_text(json.dumps(MLP_CONFIG))
    no_file_opened.add((folder / "pytorch_model.bin").resolve())
    with pytest.raises(
        PickleRefused, match=r"only pickle-based weights found \(pytorch_model.bin\)"
    ):
        open_model(folder)
    assert not marker.exists()


def test_folder_prefers_safetensors_over_pickle(tmp_path, no_file_opened):
    marker = tmp_path / "unpickled.marker"
    folder = save_model(tmp_path / "both", mlp_state(0), MLP_CONFIG)
    (folder / "pytorch_model.bin").write_bytes(pickle_payload(marker))
    no_file_opened.add((folder / "pytorch_model.bin").resolve())
    model = open_model(folder)
    assert model.files == [folder / "model.safetensors"]
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# Malformed safetensors files
# ---------------------------------------------------------------------------------------------


def test_file_cut_short_is_truncated(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(mlp_state(0), str(path))
    data = path.read_bytes()
    path.write_bytes(data[:-5])
    with pytest.raises(TruncatedFile, match="the file is truncated"):
        load_model(path)


def test_file_cut_inside_header_is_truncated(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(mlp_state(0), str(path))
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(TruncatedFile, match="header says .* bytes but the file has 32"):
        load_model(path)


@pytest.mark.parametrize("size", [0, 3, 7])
def test_file_shorter_than_8_bytes_is_truncated(tmp_path, size):
    path = tmp_path / "tiny.safetensors"
    path.write_bytes(b"\x01" * size)
    with pytest.raises(TruncatedFile, match=f"{size} bytes is too short"):
        load_model(path)


def test_absurd_header_length_is_corrupt(tmp_path):
    path = write_raw(
        tmp_path / "absurd.safetensors", {"w": f32_entry([2])}, b"\0" * 8, length=2**60
    )
    with pytest.raises(CorruptHeader, match=f"header length {2**60} bytes is absurd"):
        load_model(path)


def test_header_not_json_is_corrupt(tmp_path):
    path = write_raw(tmp_path / "bad.safetensors", b"{this is not json}", b"\0" * 8)
    with pytest.raises(CorruptHeader, match="header is not valid JSON"):
        load_model(path)


def test_header_not_utf8_is_corrupt(tmp_path):
    path = write_raw(tmp_path / "bad.safetensors", b'{"\xff\xfe": 1}', b"")
    with pytest.raises(CorruptHeader, match="header is not valid JSON"):
        load_model(path)


def test_header_not_an_object_is_corrupt(tmp_path):
    path = write_raw(tmp_path / "bad.safetensors", [1, 2, 3])
    with pytest.raises(CorruptHeader, match="header is not a JSON object"):
        load_model(path)


def test_offsets_not_matching_shape_are_corrupt(tmp_path):
    entry = {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}  # needs 24 bytes
    path = write_raw(tmp_path / "bad.safetensors", {"w": entry}, b"\0" * 20)
    with pytest.raises(CorruptHeader, match=r"'w' of shape \[2, 3\] F32 needs 24 bytes.* span 20"):
        load_model(path)


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ({"dtype": "F32", "shape": [2]}, "lacks dtype, shape or data_offsets"),
        ({"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}, "invalid shape"),
        ({"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}, "invalid shape"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}, "invalid data_offsets"),
        ({"dtype": "F32", "shape": [2], "data_offsets": "0-8"}, "invalid data_offsets"),
    ],
    ids=["no-offsets", "negative-dim", "bool-dim", "reversed-offsets", "offsets-string"],
)
def test_invalid_entry_is_corrupt(tmp_path, entry, fragment):
    path = write_raw(tmp_path / "bad.safetensors", {"w": entry}, b"\0" * 8)
    with pytest.raises(CorruptHeader, match=f"'w'.*{fragment}|{fragment}.*'w'"):
        load_model(path)


def test_overlapping_tensors_are_corrupt(tmp_path):
    header = {"a": f32_entry([2]), "b": f32_entry([2])}  # both at bytes 0..8
    path = write_raw(tmp_path / "overlap.safetensors", header, b"\0" * 8)
    with pytest.raises(CorruptHeader, match="overlapping or gapped data_offsets"):
        load_model(path)


def test_trailing_bytes_after_the_data_are_corrupt(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(mlp_state(0), str(path))
    path.write_bytes(path.read_bytes() + b"extra")
    with pytest.raises(CorruptHeader, match="5 bytes after the last tensor"):
        load_model(path)


def test_unknown_dtype_is_unsupported(tmp_path):
    header = {"w": {"dtype": "Q4_K", "shape": [2], "data_offsets": [0, 8]}}
    path = write_raw(tmp_path / "q.safetensors", header, b"\0" * 8)
    with pytest.raises(UnsupportedDtype, match="tensor 'w' has unsupported dtype 'Q4_K'"):
        load_model(path)


def test_hand_written_valid_file_loads(tmp_path):
    """The byte layout the malformed cases break is itself accepted when right."""
    values = [1.5, -2.0, 0.25]
    header = {"__metadata__": {"format": "pt"}, "w": f32_entry([3])}
    path = write_raw(tmp_path / "ok.safetensors", header, struct.pack("<3f", *values))
    model = load_model(path)
    assert model.signature == {"w": (3,)}
    assert model.weights["w"].tolist() == values
    assert model.config is None


def test_every_refusal_is_a_lineage_error():
    for error in (CorruptHeader, TruncatedFile, UnsupportedDtype, PickleRefused, ShapeMismatch):
        assert issubclass(error, LineageError)


# ---------------------------------------------------------------------------------------------
# Values and dtypes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_non_finite_weights_name_the_tensor(tmp_path, bad, dtype):
    state = mlp_state(0, dtype)
    state["layers.1.weight"][2, 5] = bad
    folder = save_model(tmp_path / "bad", state, MLP_CONFIG)
    with pytest.raises(NonFiniteWeights, match="tensor 'layers.1.weight' holds NaN or infinite"):
        load_model(folder)


def test_non_finite_check_can_be_skipped(tmp_path):
    state = mlp_state(0)
    state["layers.0.bias"][0] = float("nan")
    model = load_model(save_model(tmp_path / "bad", state, MLP_CONFIG), check_finite=False)
    assert torch.isnan(model.weights["layers.0.bias"][0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_loads_and_compares_in_float32(tmp_path, dtype):
    state = mlp_state(4, dtype)
    model = open_model(save_model(tmp_path / "half", state, MLP_CONFIG))
    assert model.weights["layers.0.weight"].dtype == dtype
    floats = model.float_tensors()
    assert set(floats) == set(MLP_SHAPES)
    for name, tensor in floats.items():
        assert tensor.dtype == torch.float32
        assert torch.equal(tensor, state[name].to(torch.float32))


def test_float8_weights_load(tmp_path):
    state = {"w": torch.tensor([0.5, -1.0, 2.0]).to(torch.float8_e4m3fn)}
    path = tmp_path / "f8.safetensors"
    save_file(state, str(path))
    model = load_model(path)
    assert model.float_tensors()["w"].tolist() == [0.5, -1.0, 2.0]


def test_integer_tensors_are_not_float_tensors(tmp_path):
    path = tmp_path / "mixed.safetensors"
    save_file({"w": torch.ones(2), "steps": torch.tensor([3], dtype=torch.int64)}, str(path))
    model = load_model(path)
    assert set(model.float_tensors()) == {"w"}
    assert model.signature == {"w": (2,), "steps": (1,)}


def test_model_larger_than_max_bytes_is_refused(mlp_folder):
    size = (mlp_folder / "model.safetensors").stat().st_size
    assert load_model(mlp_folder, max_bytes=size).num_bytes == size
    with pytest.raises(ModelTooLarge, match=f"weights are {size} bytes, above the limit of 100"):
        load_model(mlp_folder, max_bytes=100)


# ---------------------------------------------------------------------------------------------
# Configs and architectures
# ---------------------------------------------------------------------------------------------


def test_config_json_not_json_is_invalid(mlp_folder):
    (mlp_folder / "config.json").write_text('{"model_type": "lineage-mlp",')
    with pytest.raises(InvalidConfig, match="config.json: not valid JSON"):
        load_model(mlp_folder)


def test_config_json_not_utf8_is_invalid(mlp_folder):
    (mlp_folder / "config.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(InvalidConfig, match="config.json: not UTF-8"):
        load_model(mlp_folder)


def test_config_json_not_an_object_is_invalid(mlp_folder):
    (mlp_folder / "config.json").write_text("[4, 8, 3]")
    with pytest.raises(InvalidConfig, match="must be a JSON object"):
        load_model(mlp_folder)


def test_unknown_model_type_is_invalid_config(tmp_path):
    config = {**MLP_CONFIG, "model_type": "no-such-architecture"}
    folder = save_model(tmp_path / "unknown", mlp_state(0), config)
    assert load_model(folder).model_type == "no-such-architecture"  # files alone are fine
    with pytest.raises(InvalidConfig, match="unknown model_type 'no-such-architecture'"):
        open_model(folder)


def test_config_without_model_type_is_invalid(tmp_path):
    folder = save_model(tmp_path / "untyped", mlp_state(0), {"sizes": [4, 8, 3]})
    with pytest.raises(InvalidConfig, match="no 'model_type'"):
        open_model(folder)


def test_bad_mlp_sizes_are_invalid_config(tmp_path):
    folder = save_model(tmp_path / "m", mlp_state(0), {**MLP_CONFIG, "sizes": [4, "8", 3]})
    with pytest.raises(InvalidConfig, match="'sizes' must be a non-empty list of positive"):
        open_model(folder)


def test_wrong_shape_is_shape_mismatch(tmp_path):
    state = mlp_state(0)
    state["layers.0.weight"] = torch.randn(8, 5)
    folder = save_model(tmp_path / "wrong", state, MLP_CONFIG)
    load_model(folder)  # the files themselves are valid
    with pytest.raises(
        ShapeMismatch, match=r"wrong shapes: layers.0.weight \(8, 5\) \(expected \(8, 4\)\)"
    ):
        open_model(folder)


def test_missing_tensor_is_shape_mismatch(tmp_path):
    state = mlp_state(0)
    del state["layers.1.bias"]
    folder = save_model(tmp_path / "missing", state, MLP_CONFIG)
    with pytest.raises(ShapeMismatch, match="missing tensors: layers.1.bias"):
        open_model(folder, "the-model")


def test_shape_mismatch_names_the_model(tmp_path):
    state = mlp_state(0)
    del state["layers.1.bias"]
    folder = save_model(tmp_path / "missing", state, MLP_CONFIG)
    with pytest.raises(ShapeMismatch, match="^the-model: weights do not fit the architecture"):
        open_model(folder, "the-model")


# ---------------------------------------------------------------------------------------------
# Paths that hold no model
# ---------------------------------------------------------------------------------------------


def test_nonexistent_path_is_not_found(tmp_path):
    missing = tmp_path / "nowhere" / "model.safetensors"
    with pytest.raises(ModelNotFound, match="no such file or folder"):
        load_model(missing)


def test_nonexistent_pickle_path_is_not_found(tmp_path):
    with pytest.raises(ModelNotFound, match="model.bin: no such file"):
        load_model(tmp_path / "model.bin")


def test_empty_folder_has_no_weights(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoWeights, match="no model.safetensors in this folder"):
        load_model(tmp_path / "empty")


def test_folder_with_only_config_has_no_weights(tmp_path):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text(json.dumps(MLP_CONFIG))
    with pytest.raises(NoWeights, match="no model.safetensors"):
        open_model(tmp_path / "cfg")


def test_text_file_has_no_weights(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a model")
    with pytest.raises(NoWeights, match=r"notes.txt: not a .safetensors file or a model folder"):
        load_model(path)


def test_several_unindexed_safetensors_are_ambiguous(tmp_path):
    folder = tmp_path / "two"
    folder.mkdir()
    save_file({"a": torch.ones(2)}, str(folder / "a.safetensors"))
    save_file({"b": torch.ones(2)}, str(folder / "b.safetensors"))
    with pytest.raises(
        NoWeights, match="several .safetensors files and no model.safetensors.index"
    ):
        load_model(folder)


def test_file_without_tensors_has_no_weights(tmp_path):
    path = write_raw(tmp_path / "empty.safetensors", {"__metadata__": {"format": "pt"}})
    with pytest.raises(NoWeights, match="holds no tensors"):
        load_model(path)


def test_mapped_tensors_equal_read_ones_and_stay_the_callers(tmp_path):
    """A trusted model's large tensors are copy-on-write maps of the file: the same values as a
    read, each value its caller's own (writing to one changes neither the file nor another
    value), alive after the model is gone; small ones are read as before."""
    state = {
        "big": torch.randn(600, 600),  # 1.4 MB: mapped
        "half": torch.randn(1000, 700).to(torch.bfloat16),
        "odd": torch.randn(3).to(torch.float16),
        "after": torch.randn(400, 700),
        "small": torch.randn(4),
    }
    folder = save_model(tmp_path / "m", state, None)
    before = (folder / "model.safetensors").read_bytes()
    mapped = load_model(folder, mapped=True)
    read = load_model(folder)
    assert mapped.weights.mapped and not read.weights.mapped
    for name in state:
        assert torch.equal(mapped.weights[name], read.weights[name]), name
        assert mapped.weights[name].dtype == state[name].dtype
    first = mapped.weights["big"]
    assert mapped.weights._map("big") is not None
    assert mapped.weights._map("small") is None  # below MAP_MIN_BYTES: read
    first.mul_(0)
    assert torch.equal(mapped.weights["big"], state["big"])  # another value, untouched
    assert (folder / "model.safetensors").read_bytes() == before  # and the file too
    second = mapped.weights["half"]
    del mapped
    assert torch.equal(second, state["half"])  # the map lives as long as the tensor
