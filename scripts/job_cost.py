"""What one detection job costs in the service: a child against catalog candidates, run by the
worker's own steps (claim, score, record) on a fresh SQLite catalog, timed step by step.

    python scripts/job_cost.py [--size bert-base|bert-small] [--candidates 2] [--method auto]

Models are freshly initialised ``transformers`` BERT models (seeded), saved as safetensors and
registered through ``registry.ingest`` exactly as ``POST /parents`` does; the child is the first
candidate plus small seeded noise. Prints the registration time per model, the job's wall time,
the time spent in ``score`` (opening the models, ranking) and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import torch

from app.bench.speed import HeldJobs, upload
from app.core.config import Settings
from app.core.db import make_engine, migrate, session_factory, transaction
from app.detection import service as detection
from app.engine.model_files import save_model
from app.registry import service as registry

SIZES = {
    "bert-base": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
    },
    "bert-small": {
        "hidden_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "intermediate_size": 1024,
    },
}


def bert_state(size: str, seed: int) -> tuple[dict[str, torch.Tensor], dict]:
    """A freshly initialised BERT of ``size`` (seeded) and its config.json."""
    from transformers import BertConfig, BertModel

    config = BertConfig(**SIZES[size])
    torch.manual_seed(seed)
    model = BertModel(config)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    return state, {**config.to_dict(), "model_type": "bert"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="bert-base")
    parser.add_argument("--candidates", type=int, default=2)
    parser.add_argument("--method", default="auto")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="lineage-job-cost-") as tmp:
        root = Path(tmp)
        url = f"sqlite:///{root / 'lineage.db'}"
        migrate(url)
        settings = Settings(database_url=url, storage_dir=root / "storage")
        factory = session_factory(make_engine(url))
        folders = []
        for i in range(args.candidates):
            state, config = bert_state(args.size, i)
            folders.append(save_model(root / f"parent-{i}", state, config))
        parent0, config = bert_state(args.size, 0)
        gen = torch.Generator().manual_seed(99)
        child = {k: v + 1e-3 * torch.randn(v.shape, generator=gen) for k, v in parent0.items()}
        child_folder = save_model(root / "child", child, config)
        del parent0, child
        started = time.perf_counter()
        with ExitStack() as stack, transaction(factory) as session:
            for i, folder in enumerate(folders):
                registry.ingest(
                    session, settings, upload(folder, stack), name=f"p{i}", candidate=True
                )
        registration = (time.perf_counter() - started) / len(folders)
        dispatcher = HeldJobs()
        with ExitStack() as stack, transaction(factory) as session:
            detection.submit(
                session,
                settings,
                dispatcher,
                upload(child_folder, stack),
                name="child",
                method=args.method,
            )
        job_id = dispatcher.jobs[0]
        started = time.perf_counter()
        claimed = detection.claim(factory, job_id)
        scoring = time.perf_counter()
        result = detection.score(claimed, "cpu", lambda _: None)
        scored = time.perf_counter()
        detection.record(factory, claimed, result)
        finished = time.perf_counter()
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        params = sum(v.numel() for v in bert_state(args.size, 0)[0].values())
        decision = result["decision"]
        print(
            f"{args.size} ({params / 1e6:.1f} M parameters), {args.candidates} candidates, "
            f"method {args.method}"
        )
        print(f"registration per model: {registration:.2f} s")
        print(
            f"job: {finished - started:.2f} s (score {scored - scoring:.2f} s), "
            f"peak RSS {peak_mb:.0f} MB; parent {decision['parent']}"
        )


if __name__ == "__main__":
    main()
