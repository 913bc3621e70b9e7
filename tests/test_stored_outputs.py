"""A catalog model's outputs on the default probes are computed once, at registration, and a job
reads them instead of running the candidate's forward pass: the same f_p, the same rankings."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file

from app.engine import architectures, stored_outputs
from app.engine.architectures import open_model
from app.engine.decision import rank_candidates
from app.engine.methods import PairContext
from app.engine.model_files import save_model
from app.engine.sketch import output_sketch
from tests.factories import TINY_MLP_CONFIG, tiny_mlp_state

# ``client``: the embedded service (a fixture)
from tests.test_work_once import client, files_of, stored_folder  # noqa: F401

GPT2 = {
    "model_type": "gpt2",
    "vocab_size": 64,
    "n_embd": 32,
    "n_layer": 4,
    "n_head": 2,
    "n_positions": 32,
    "bos_token_id": 0,
    "eos_token_id": 0,
}
# The tiny MLP with its head replaced by one of five classes.
NEW_HEAD = {**TINY_MLP_CONFIG, "sizes": [4, 8, 5]}


def moved(state: dict, seed: int, size: float = 0.05) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {
        k: v + size * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v.clone()
        for k, v in state.items()
    }


def gpt2_state(seed: int) -> dict:
    torch.manual_seed(seed)
    return transformers.GPT2Model(transformers.GPT2Config(**GPT2)).state_dict()


def stored_copy(source: Path, folder: Path) -> Path:
    """``source``'s files in ``folder``, with its outputs stored as registration stores them."""
    shutil.copytree(source, folder)
    model = open_model(folder, folder.name)
    assert stored_outputs.save_outputs(model, folder) == folder / stored_outputs.OUTPUTS_FILE
    return folder


@pytest.fixture(autouse=True)
def store_every_size(monkeypatch):
    """The tests' models are tiny: they are stored whatever their size."""
    monkeypatch.setattr(stored_outputs, "MIN_PARAMETERS", 0)


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """{family: (plain parent folders, the same with stored outputs, child folder)}."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stored_outputs, "MIN_PARAMETERS", 0)
        return _family(tmp_path_factory.mktemp("stored"))


def _family(out: Path) -> dict:
    made = {}
    for kind, root, config in (
        ("mlp", tiny_mlp_state(0), TINY_MLP_CONFIG),
        ("gpt2", gpt2_state(0), GPT2),
    ):
        plain, stored = [], []
        for i in range(4):
            folder = save_model(out / f"{kind}-p{i}", moved(root, i), config)
            plain.append(folder)
            stored.append(stored_copy(folder, out / f"{kind}-s{i}"))
        child = save_model(out / f"{kind}-c", moved(moved(root, 1), 9, 0.01), config)
        made[kind] = (plain, stored, child)
    head = tiny_mlp_state(3)
    head["layers.1.weight"] = torch.randn(5, 8)
    head["layers.1.bias"] = torch.randn(5)
    made["new-head"] = save_model(out / "mlp-new-head", head, NEW_HEAD)
    return made


@pytest.mark.parametrize("kind", ["mlp", "gpt2"])
def test_the_stored_output_is_the_forward_pass(family, kind):
    plain, stored, child_folder = family[kind]
    child = open_model(child_folder, "child")
    fresh = PairContext(open_model(plain[0], "p"), child)
    kept = PairContext(open_model(stored[0], "p"), child)
    torch.testing.assert_close(kept.parent_output, fresh.parent_output, rtol=0, atol=0)
    assert "states" in fresh.__dict__  # the fresh one ran the candidate's forward pass
    assert "states" not in kept.__dict__  # the stored one read it: no state, no pass


def test_a_replaced_head_is_compared_on_the_stored_features(family):
    """The MLP family stores its logits and its features; a child whose head was replaced is
    compared on the features, which are stored too."""
    plain, stored, _ = family["mlp"]
    child = open_model(family["new-head"], "child")
    fresh = PairContext(open_model(plain[0], "p"), child)
    kept = PairContext(open_model(stored[0], "p"), child)
    assert kept.use_head is False
    torch.testing.assert_close(kept.parent_output, fresh.parent_output, rtol=0, atol=0)
    assert "states" not in kept.__dict__


@pytest.mark.parametrize("kind", ["mlp", "gpt2"])
@pytest.mark.parametrize("method", ["auto", "l2", "cka"])
def test_rankings_with_stored_outputs_equal_those_without(family, kind, method):
    plain, stored, child_folder = family[kind]
    for batched in (True, False):
        rankings = [
            rank_candidates(
                open_model(child_folder, "child"),
                [open_model(f, f"p{i}") for i, f in enumerate(folders)],
                method,
                batched=batched,
            )
            for folders in (plain, stored)
        ]
        without, with_stored = rankings
        assert [c.parent for c in with_stored.candidates] == [c.parent for c in without.candidates]
        for a, b in zip(with_stored.candidates, without.candidates, strict=True):
            assert a.score == pytest.approx(b.score, rel=1e-5, abs=1e-9)
        assert with_stored.decision.parent == without.decision.parent


def test_outputs_of_other_weights_versions_or_probes_are_not_used(family, tmp_path):
    plain, stored, child_folder = family["mlp"]
    child = open_model(child_folder, "child")
    # Another model's stored outputs, copied beside these weights: tagged with other weights.
    impostor = shutil.copytree(plain[2], tmp_path / "impostor")
    (impostor / ".lineage").mkdir()
    shutil.copy(stored[0] / stored_outputs.OUTPUTS_FILE, impostor / stored_outputs.OUTPUTS_FILE)
    assert PairContext(open_model(impostor, "p"), child).stored_parent_output() is None
    # Another version of the computation.
    old = shutil.copytree(stored[0], tmp_path / "old")
    path = old / stored_outputs.OUTPUTS_FILE
    with safe_open(path, framework="pt") as file:
        tensors = {k: file.get_tensor(k) for k in file.keys()}  # noqa: SIM118
        metadata = {**file.metadata(), "version": "0"}
    save_file(tensors, path, metadata=metadata)
    assert PairContext(open_model(old, "p"), child).stored_parent_output() is None
    # Other probes than the default ones: computed as before.
    own = open_model(stored[0], "p")
    assert PairContext(own, child, num_probes=8).stored_parent_output() is None
    assert PairContext(own, child).stored_parent_output() is not None
    # A damaged file is as good as none.
    broken = shutil.copytree(stored[0], tmp_path / "broken")
    (broken / stored_outputs.OUTPUTS_FILE).write_bytes(b"not safetensors")
    context = PairContext(open_model(broken, "p"), child)
    assert context.stored_parent_output() is None
    torch.testing.assert_close(
        context.parent_output, PairContext(open_model(plain[0], "p"), child).parent_output
    )


def test_the_sketch_reads_the_stored_features(family):
    """Registration's sketch takes its output part from the stored outputs: the same part."""
    plain, stored, _ = family["gpt2"]
    fresh = output_sketch(open_model(plain[0], "p"))
    kept = output_sketch(open_model(stored[0], "p"))
    assert fresh[0] == kept[0]
    assert (fresh[1] == kept[1]).all()


def test_a_large_model_stores_the_outputs_of_its_subnetwork(family, tmp_path, monkeypatch):
    """Above the parameter budget, f is the first blocks' hidden state: that is what is
    stored, and a job reads it and still says which sub-network it used."""
    plain, _, child_folder = family["gpt2"]
    whole = architectures._parameters_on_meta(GPT2)
    one = architectures._parameters_on_meta({**GPT2, "n_layer": 1})
    per_block = (whole - one) // 3
    monkeypatch.setattr(architectures, "FUNCTION_SPACE_MAX_PARAMETERS", one + per_block)
    stored = [stored_copy(f, tmp_path / f"s{i}") for i, f in enumerate(plain)]
    child = open_model(child_folder, "child")
    kept = PairContext(open_model(stored[0], "p"), child)
    fresh = PairContext(open_model(plain[0], "p"), child)
    torch.testing.assert_close(kept.parent_output, fresh.parent_output, rtol=0, atol=0)
    assert "states" not in kept.__dict__
    ranking = rank_candidates(child, [open_model(f, f"p{i}") for i, f in enumerate(stored)], "l2")
    assert ranking.subnetwork == {"blocks": 2, "of": 4, "parameters": one + per_block}


def test_registration_stores_the_outputs_and_a_job_reads_them(client, tmp_path):  # noqa: F811
    root = tiny_mlp_state(0)
    sources = {
        "p0": save_model(tmp_path / "p0", moved(root, 0), TINY_MLP_CONFIG),
        "p1": save_model(tmp_path / "p1", moved(root, 1), TINY_MLP_CONFIG),
        "bare": save_model(tmp_path / "bare", moved(root, 2), None),  # weights only
    }
    child = save_model(tmp_path / "child", moved(moved(root, 1), 9, 0.01), TINY_MLP_CONFIG)
    for name, source in sources.items():
        response = client.post("/parents", data={"name": name}, files=files_of(source))
        assert response.status_code == 201, response.text
    outputs = {name: stored_folder(client, name) / stored_outputs.OUTPUTS_FILE for name in sources}
    assert outputs["p0"].is_file()
    assert not outputs["bare"].exists()  # no config: no function space

    def scores() -> dict[str, float]:
        response = client.post(
            "/detect", data={"name": "child", "method": "l2"}, files=files_of(child)
        )
        client.app.state.dispatcher.join()
        job = client.get(f"/jobs/{response.json()['job_id']}").json()
        assert job["status"] == "succeeded", job
        return {c["parent"]: c["score"] for c in job["result"]["candidates"]}

    before = scores()
    assert set(before) == {"p0", "p1"}  # the weights-only model has no function space
    # p0's stored outputs replaced by zeros (same names, same tag): the job reads them.
    with safe_open(outputs["p0"], framework="pt") as file:
        zeros = {k: torch.zeros_like(file.get_tensor(k)) for k in file.keys()}  # noqa: SIM118
        metadata = file.metadata()
    save_file(zeros, outputs["p0"], metadata=metadata)
    after = scores()
    assert after["p1"] == pytest.approx(before["p1"])
    assert after["p0"] != pytest.approx(before["p0"])


def test_small_models_store_nothing(tmp_path, monkeypatch):
    """Below ``MIN_PARAMETERS`` the forward pass is cheaper than reading a file: nothing is
    stored, and nothing is looked for."""
    monkeypatch.setattr(stored_outputs, "MIN_PARAMETERS", 10**6)
    folder = save_model(tmp_path / "p", tiny_mlp_state(0), TINY_MLP_CONFIG)
    model = open_model(folder, "p")
    assert stored_outputs.save_outputs(model, folder) is None
    assert not (folder / stored_outputs.OUTPUTS_FILE).exists()
    monkeypatch.setattr(stored_outputs, "MIN_PARAMETERS", 0)
    stored_outputs.save_outputs(model, folder)
    monkeypatch.setattr(stored_outputs, "MIN_PARAMETERS", 10**6)
    child = open_model(save_model(tmp_path / "c", tiny_mlp_state(1), TINY_MLP_CONFIG))
    assert PairContext(open_model(folder, "p"), child).stored_parent_output() is None
