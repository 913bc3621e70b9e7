"""A model's outputs on the default probes, computed once at registration and stored beside it.

Every function-space method compares f_p, a candidate's output on the probes, with the child's
f_c. f_p depends on the candidate alone (its weights, the network its config builds, the probes
and whether f includes the head), so a catalog model's f_p is the same in every job that scores
it: registration computes it once (``save_outputs``: one forward pass without gradients, on the
sub-network ``architectures.function_subnetwork`` gives a model of more than 400 M parameters)
and stores it in ``.lineage/outputs.safetensors``, tagged like the weight statistics with the
model's SHA-256. A job then reads it (``stored_output``) instead of running the candidate's
forward pass: a BERT-base-sized candidate costs 3 MB read instead of a 1.5 s pass on 2 CPU cores.

Outputs are stored for the default probes (``DEFAULT_NUM_PROBES``, ``DEFAULT_PROBE_SEED``); each
is named by a digest of the network's config, the head choice and the probes' bytes, so a job
asking for other probes, or a network the engine now builds differently, finds nothing and
computes f_p as before. ``lineage-mlp``/``lineage-cnn`` models store both their logits and their
features (a child whose head was replaced is compared on the features); a ``transformers``
model's f is its last hidden state, the same either way.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from app.engine.architectures import function_subnetwork, model_state, network_for
from app.engine.errors import LineageError
from app.engine.model_files import LoadedModel
from app.engine.probes import DEFAULT_NUM_PROBES, DEFAULT_PROBE_SEED, probe_inputs
from app.engine.weightspace import save_derived, stored_for

OUTPUTS_FILE = Path(".lineage") / "outputs.safetensors"
# Bump when ``Network.output`` or the probes change what they compute for the same names.
OUTPUTS_VERSION = "1"
# Below this many parameters a model's forward pass on the probes costs less than reading its
# stored outputs (1,000 tiny-MLP candidates: 1.2 s computed, 1.8 s read), so nothing is stored.
MIN_PARAMETERS = 1_000_000
# The key of ``LoadedModel.cache`` under which the stored file's tensor names are kept
# (None: the model has no usable stored outputs).
_CACHE_KEY = "stored_outputs"


def output_name(config: dict, use_head: bool, probes: torch.Tensor) -> str:
    """The name f is stored under: a digest of the network's config, the head choice and the
    probes' values (shape, dtype and bytes)."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    digest.update(f":{bool(use_head)}:{list(probes.shape)}:{probes.dtype}:".encode())
    digest.update(probes.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def compute_outputs(
    model: LoadedModel, device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """{output_name: f (N, K) float32 on the CPU} of ``model`` on the default probes, in the
    network its own config builds (its function-space sub-network for a large model): one
    forward pass, two for a family whose head is optional. Raises ``LineageError`` (no config,
    a network the engine cannot build, weights that do not fit it)."""
    config, _ = function_subnetwork(model.config, model.num_parameters)
    network = network_for(config, device)
    state, _ = model_state(network, model, device, keep=False)
    probes = probe_inputs(network, DEFAULT_NUM_PROBES, DEFAULT_PROBE_SEED, device)
    heads = [True] if network.family == "transformers" else [True, False]
    outputs = {}
    with torch.no_grad():
        for use_head in heads:
            f = network.output(state, probes, use_head)
            outputs[output_name(network.config, use_head, probes)] = f.float().cpu().contiguous()
    return outputs


def save_outputs(
    model: LoadedModel, folder: Path, device: torch.device | str = "cpu"
) -> Path | None:
    """Compute ``model``'s outputs (``compute_outputs``) and store them in
    ``folder/.lineage/outputs.safetensors``, tagged with its SHA-256 and ``OUTPUTS_VERSION``,
    written to a temporary file and renamed (a reader never sees half a file). None, and nothing
    written, for a model that has none: no config, or a network the engine cannot build or run
    (its jobs then fail or skip it as they would have), and for one of fewer than
    ``MIN_PARAMETERS``, whose pass is cheaper than the read."""
    if model.num_parameters < MIN_PARAMETERS:
        return None
    try:
        outputs = compute_outputs(model, device)
    except (LineageError, RuntimeError):
        return None
    metadata = {"sha256": model.sha256, "version": OUTPUTS_VERSION}
    return save_derived(outputs, Path(folder) / OUTPUTS_FILE, metadata)


def _stored_names(model: LoadedModel) -> set[str] | None:
    """The names of the outputs stored for ``model``'s weights in its own folder, read once per
    model (the header only); None when there are none that belong to it."""
    if _CACHE_KEY not in model.cache:
        names = None
        folder = Path(model.path)
        path = folder / OUTPUTS_FILE
        if folder.is_dir() and path.is_file():
            try:
                with safe_open(path, framework="pt") as stored:
                    metadata = stored.metadata() or {}
                    if (
                        stored_for(model, folder, metadata.get("sha256"))
                        and metadata.get("version") == OUTPUTS_VERSION
                    ):
                        names = set(stored.keys())  # noqa: SIM118
            except (OSError, SafetensorError):
                names = None  # unreadable: computed afresh, as if never stored
        model.cache[_CACHE_KEY] = names
    return model.cache[_CACHE_KEY]


def stored_output(model: LoadedModel, name: str) -> torch.Tensor | None:
    """f stored for ``model`` under ``name`` (``output_name``), float32 on the CPU, or None."""
    if model.num_parameters < MIN_PARAMETERS:  # never stored: not even a look at the folder
        return None
    names = _stored_names(model)
    if not names or name not in names:
        return None
    try:
        with safe_open(Path(model.path) / OUTPUTS_FILE, framework="pt") as stored:
            return stored.get_tensor(name)
    except (OSError, SafetensorError):
        return None
