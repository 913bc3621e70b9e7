"""Hostile input: configs that claim more than their weights hold, oversized and deeply nested
JSON, empty weights, server paths in messages, and a hub that does not answer. Each is refused
with the engine's own error (a 4xx over HTTP), never a 500, and costs no more than its bytes."""

from __future__ import annotations

import json
import resource
import socket
import struct
import threading
import time
from pathlib import Path

import pytest
import torch
from pydantic import BaseModel
from safetensors.torch import save_file

from app.core import deps
from app.core.db import migrate
from app.engine import architectures
from app.engine.architectures import open_model
from app.engine.errors import CorruptHeader, InvalidConfig, NoWeights, ShapeMismatch
from app.engine.model_files import load_model, read_safetensors_header
from app.hub import resolve as hub
from tests.test_api import assert_error, start_service, upload

HOSTILE_MLP = {"model_type": "lineage-mlp", "sizes": [20000, 20000, 2]}


def _model(folder: Path, tensors: dict[str, torch.Tensor], config: dict | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"))
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def _raw_safetensors(path: Path, header: bytes, data: bytes = b"") -> Path:
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


def _hostile_mlp(folder: Path) -> Path:
    """A few hundred bytes whose config claims 400 M parameters: every tensor the network has is
    named, as empty integer tensors (which the shape check used to let through), and one small
    float tensor that fits."""
    empty = torch.zeros(0, dtype=torch.uint8)
    tensors = {f"layers.{i}.{k}": empty for i in (0, 1) for k in ("weight", "bias")}
    tensors["layers.1.bias"] = torch.zeros(2)
    return _model(folder, tensors, HOSTILE_MLP)


def test_a_config_larger_than_its_weights_is_refused_before_anything_is_allocated(tmp_path):
    folder = _hostile_mlp(tmp_path / "hostile")
    assert sum(p.stat().st_size for p in folder.iterdir()) < 500
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(
        ShapeMismatch, match=r"layers\.0\.weight \(0,\) \(expected \(20000, 20000\)\)"
    ):
        open_model(folder)
    # Building the network for real would touch 1.6 GB (the resident high-water mark's rise).
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024 < 200 * 2**20


def test_a_network_that_cannot_be_built_on_meta_keeps_its_parameters_off_memory(
    tmp_path, monkeypatch
):
    build_mlp = architectures.FAMILIES["lineage-mlp"]

    def needs_real_numbers(config):  # as a module reading a value back with .item() would
        if torch.get_default_device().type == "meta":
            raise NotImplementedError("cannot read a value on meta")
        return build_mlp(config)

    monkeypatch.setitem(architectures.FAMILIES, "lineage-mlp", needs_real_numbers)
    folder = _hostile_mlp(tmp_path / "hostile")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ShapeMismatch, match="wrong shapes"):
        open_model(folder)
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024 < 200 * 2**20


def test_a_config_of_a_million_layers_is_stopped_after_a_few(tmp_path):
    sizes = [2] * 1_000_000
    folder = _model(tmp_path / "deep", {"layers.0.weight": torch.ones(2, 2)}, None)
    (folder / "config.json").write_text(json.dumps({"model_type": "lineage-mlp", "sizes": sizes}))
    started = time.monotonic()
    with pytest.raises(ShapeMismatch, match="more tensors than the weights hold"):
        open_model(folder)
    assert time.monotonic() - started < 10


def test_a_transformers_config_larger_than_its_weights_is_refused(tmp_path):
    config = {
        "model_type": "bert",
        "vocab_size": 10_000_000,
        "hidden_size": 4096,
        "num_hidden_layers": 2,
        "num_attention_heads": 8,
        "intermediate_size": 16,
    }
    folder = _model(
        tmp_path / "bert", {"embeddings.word_embeddings.weight": torch.ones(4, 4)}, config
    )
    with pytest.raises(ShapeMismatch, match="word_embeddings"):
        open_model(folder)


def test_a_safetensors_header_nested_100000_deep_is_a_corrupt_header(tmp_path):
    path = _raw_safetensors(tmp_path / "deep.safetensors", b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(CorruptHeader, match="nested deeper than"):
        read_safetensors_header(path)
    nested = b'{"__metadata__": ' + b'{"a": ' * 1000 + b'"x"' + b"}" * 1000 + b"}"
    with pytest.raises(CorruptHeader, match="nested deeper than"):
        read_safetensors_header(_raw_safetensors(tmp_path / "meta.safetensors", nested))


def test_a_deeply_nested_config_is_an_invalid_config(tmp_path):
    folder = _model(tmp_path / "m", {"w": torch.ones(2)}, None)
    (folder / "config.json").write_text("[" * 50_000 + "]" * 50_000)
    with pytest.raises(InvalidConfig, match="nested deeper than"):
        load_model(folder)


def test_weights_whose_only_tensor_is_empty_are_no_model(tmp_path):
    single = tmp_path / "empty.safetensors"
    save_file({"w": torch.zeros(0, 3)}, str(single))
    with pytest.raises(NoWeights, match="no values to compare") as caught:
        open_model(single)
    assert str(tmp_path) not in caught.value.message


def test_error_messages_name_files_not_server_paths(tmp_path):
    folder = tmp_path / "private" / "staging-folder"
    folder.mkdir(parents=True)
    (folder / "README.md").write_text("no weights")
    with pytest.raises(NoWeights) as caught:
        load_model(folder)
    assert str(tmp_path) not in caught.value.message
    (folder / "model.safetensors").write_bytes(b"x")
    (folder / "config.json").write_text("{not json")
    save_file({"w": torch.ones(2)}, str(folder / "model.safetensors"))
    with pytest.raises(InvalidConfig) as caught:
        load_model(folder)
    assert caught.value.message.startswith("config.json:")
    save_file({"w": torch.tensor([float("nan")])}, str(folder / "model.safetensors"))
    (folder / "config.json").unlink()
    with pytest.raises(Exception) as caught:
        load_model(folder)
    assert str(tmp_path) not in caught.value.message


# Over HTTP ------------------------------------------------------------------------------------


def _service(tmp_path: Path, **settings):
    url = f"sqlite:///{tmp_path / 'lineage.db'}"
    migrate(url)
    return start_service(url, tmp_path / "storage", **settings)


@pytest.fixture
def api(tmp_path):
    svc = _service(tmp_path)
    with svc.client:
        yield svc
    svc.engine.dispose()


def test_hostile_uploads_are_4xx_and_leave_nothing(api, tmp_path):
    hostile = _hostile_mlp(tmp_path / "hostile")
    response = api.client.post("/parents", data={"name": "org/h"}, files=upload(hostile))
    assert_error(response, 400, "shape_mismatch")
    empty = _model(tmp_path / "empty", {"w": torch.zeros(0)}, None)
    response = api.client.post(
        "/parents", data={"name": "org/e"}, files=upload(empty, "model.safetensors")
    )
    error = assert_error(response, 400, "no_weights")
    assert str(api.settings.storage_dir) not in error["message"]
    deep = _raw_safetensors(tmp_path / "model.safetensors", b"{" * 100_000)
    response = api.client.post(
        "/parents",
        data={"name": "org/d"},
        files=[("files", ("model.safetensors", deep.read_bytes()))],
    )
    assert_error(response, 400, "corrupt_header")
    assert api.rows() == (0, 0) and api.stored() == []


def test_json_bodies_are_capped_and_depth_limited(api):
    big = json.dumps({"hub_id": "org/x", "pad": "x" * deps.MAX_JSON_BODY_BYTES})
    headers = {"Content-Type": "application/json"}
    assert_error(
        api.client.post("/parents", content=big, headers=headers), 413, "request_too_large"
    )

    def chunks():  # no Content-Length: cut off as it arrives
        yield b'{"hub_id": "org/x", "pad": "'
        for _ in range(deps.MAX_JSON_BODY_BYTES // 65536 + 1):
            yield b"x" * 65536
        yield b'"}'

    response = api.client.post("/parents", content=chunks(), headers=headers)
    assert_error(response, 413, "request_too_large")
    deep = "[" * 100_000 + "]" * 100_000
    response = api.client.post("/detect", content=deep, headers=headers)
    assert_error(response, 400, "json_too_deep")
    moderately = '{"hub_id": ' + "[" * 100 + "]" * 100 + "}"
    assert_error(
        api.client.post("/parents", content=moderately, headers=headers), 400, "json_too_deep"
    )
    # Malformed and merely wrong bodies keep their 422.
    assert_error(api.client.post("/parents", content="{", headers=headers), 422)
    assert_error(api.client.post("/parents", content='{"hub_id": 3}', headers=headers), 422)


# The hub ---------------------------------------------------------------------------------------


class SilentServer:
    """A TCP server on 127.0.0.1 that accepts connections and never answers."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(connection)

    def close(self):
        self.sock.close()
        for connection in self.accepted:
            connection.close()


@pytest.fixture
def silent_hub(monkeypatch):
    from huggingface_hub import constants

    server = SilentServer()
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.port}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "HUB_CONNECT_TIMEOUT_S", 1.0)
    monkeypatch.setattr(hub, "HUB_READ_TIMEOUT_S", 1.0)
    yield server
    server.close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_silent_hub_times_out_as_hub_offline(silent_hub, tmp_path):
    started = time.monotonic()
    with pytest.raises(hub.HubOffline, match="hub cannot be reached"):
        hub.resolve("org/model", max_bytes=2**30, cache_dir=tmp_path, offline=False)
    assert time.monotonic() - started < 8
    assert silent_hub.accepted, "the request never reached the silent server"


def test_a_closed_port_is_hub_offline(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(hub.HubOffline):
        hub.resolve("org/model", max_bytes=2**30, cache_dir=tmp_path, offline=False)


def test_a_silent_hub_is_a_503_and_blocks_neither_health_nor_other_requests(silent_hub, tmp_path):
    svc = _service(tmp_path, hf_hub_offline=False)
    answers = {}
    with svc.client:

        def register():
            answers["hub"] = svc.client.post("/parents", json={"hub_id": "org/model"})

        thread = threading.Thread(target=register)
        thread.start()
        deadline = time.monotonic() + 5
        while not silent_hub.accepted and time.monotonic() < deadline:
            time.sleep(0.02)
        assert silent_hub.accepted
        started = time.monotonic()
        health = svc.client.get("/healthz")
        assert health.status_code == 200 and time.monotonic() - started < 5
        thread.join(10)
    assert_error(answers["hub"], 503, "hub_offline")
    svc.engine.dispose()


class Named(BaseModel):
    name: str


def test_the_json_body_middleware_caps_routes_fastapi_parses_itself():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from app.api.errors import install_error_handlers
    from app.api.middleware import JsonBodyLimitMiddleware

    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(JsonBodyLimitMiddleware)

    @app.post("/named")
    def named(body: Named) -> dict:
        return {"length": len(body.name)}

    client = TestClient(app, raise_server_exceptions=False)
    big = json.dumps({"name": "x" * deps.MAX_JSON_BODY_BYTES})
    headers = {"Content-Type": "application/json"}
    assert_error(client.post("/named", content=big, headers=headers), 413, "request_too_large")

    def chunks():
        yield b'{"name": "'
        for _ in range(deps.MAX_JSON_BODY_BYTES // 65536 + 1):
            yield b"x" * 65536
        yield b'"}'

    assert_error(client.post("/named", content=chunks(), headers=headers), 413, "request_too_large")
    assert client.post("/named", json={"name": "ok"}).json() == {"length": 2}
