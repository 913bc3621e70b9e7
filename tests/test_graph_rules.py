"""A graph only evidence and curators write, on SQLite and PostgreSQL: the four ways a key could
poison the lineage graph or the catalog, each refused or left unchanged.

Alice is a curator who owns the catalog's models; Mallory holds a submitter key (and, in the
first case, Carol is a careless curator who put a child's weights into the catalog under a new
name). Real databases, the real in-process worker, no mocks."""

from __future__ import annotations

from sqlalchemy import select

from app.registry.models import Model
from tests import test_api
from tests.keys import bearer
from tests.test_api import assert_error, upload
from tests.test_auth import anonymous, make_key

family, service = test_api.family, test_api.service  # the API tests' fixtures
CARD = "---\nbase_model: org/other\n---\n# a model card that names org/other as the base\n"


def keys(svc, *roles: str) -> list:
    """A client per role, each sending its own new key."""
    clients = []
    for role in roles:
        _, key = make_key(svc, role, role)
        client = anonymous(svc)
        client.headers.update(bearer(key))
        clients.append(client)
    return clients


def edges(client, name: str) -> set[tuple[str, str, bool]]:
    tree = client.get(f"/lineage/{name}").json()
    return {(e["parent"], e["child"], e["declared"]) for e in tree["edges"]}


def test_a_child_posing_as_a_parent_writes_no_edge_over_someone_elses_model(service, family):
    alice, carol, mallory = keys(service, "curator", "curator", "submitter")
    base = alice.post("/parents", data={"name": "org/base"}, files=upload(family.parents[1]))
    assert base.status_code == 201, base.text
    # Mallory cannot put the child into the catalog as a parent herself...
    fake = {"name": "evil/base"}
    assert_error(mallory.post("/parents", data=fake, files=upload(family.child)), 403, "forbidden")
    promoted = {"name": "evil/base", "register_as_parent": "true"}
    assert_error(
        mallory.post("/detect", data=promoted, files=upload(family.child)), 403, "forbidden"
    )
    # ... and when it is there anyway (a curator registered it), sending the real parent's
    # weights to /detect answers with Alice's record and writes no edge into it.
    assert carol.post("/parents", data=fake, files=upload(family.child)).status_code == 201
    queued = mallory.post("/detect", data={"name": "evil/x"}, files=upload(family.parents[1]))
    assert queued.status_code == 202, queued.text
    answer = queued.json()
    assert answer["child"] == "org/base" and answer["created"] is False
    assert "already registered as 'org/base' by another key" in answer["notice"]
    assert "will not add edges" in answer["notice"]
    job = service.finished_job(answer["job_id"])
    assert job["status"] == "succeeded", job
    assert "not written to the graph" in job["result"]["edges_withheld"]
    assert edges(alice, "org/base") == set() and edges(alice, "evil/base") == set()
    record = alice.get("/models/org/base").json()
    assert record["name"] == "org/base" and record["parents"] == []
    assert_error(alice.get("/models/evil/x"), 404, "unknown_model")


def test_weights_registered_first_under_another_name_are_answered_not_renamed(service, family):
    alice, mallory = keys(service, "curator", "submitter")
    squatted = mallory.post(
        "/detect", data={"name": "mallory/mine"}, files=upload(family.parents[0])
    )
    assert squatted.status_code == 202, squatted.text
    service.finished_job(squatted.json()["job_id"])
    response = alice.post("/parents", data={"name": "org/p0"}, files=upload(family.parents[0]))
    assert response.status_code == 200, response.text
    record = response.json()
    assert record["created"] is False and record["name"] == "mallory/mine"
    assert "already registered as 'mallory/mine' by another key" in record["notice"]
    assert "the name 'org/p0' was not used" in record["notice"]
    assert_error(alice.get("/models/org/p0"), 404, "unknown_model")
    assert alice.get("/models/mallory/mine").json()["name"] == "mallory/mine"
    assert service.rows()[0] == 1  # one record, no duplicate and no rename


def test_a_stranger_re_uploading_weights_with_a_card_declares_nothing_on_them(
    service, family, tmp_path
):
    alice, mallory = keys(service, "curator", "submitter")
    for name, folder in (("org/base", family.parents[1]), ("org/other", family.parents[2])):
        assert alice.post("/parents", data={"name": name}, files=upload(folder)).status_code == 201
    queued = alice.post("/detect", data={"name": "org/child"}, files=upload(family.child))
    assert service.finished_job(queued.json()["job_id"])["status"] == "succeeded"
    before = edges(alice, "org/child")
    assert before == {("org/base", "org/child", False)}

    carded = tmp_path / "carded"
    carded.mkdir()
    for path in family.child.iterdir():
        (carded / path.name).write_bytes(path.read_bytes())
    (carded / "README.md").write_text(CARD)
    files = upload(carded, "model.safetensors", "config.json", "README.md")
    queued = mallory.post("/detect", data={"name": "mallory/child"}, files=files)
    assert queued.status_code == 202 and queued.json()["child"] == "org/child"
    job = service.finished_job(queued.json()["job_id"])
    assert job["status"] == "succeeded" and "edges_withheld" in job["result"]
    assert job["result"]["audit"]["declared"] == []  # her card was not taken as a claim
    assert edges(alice, "org/child") == before

    # The owner's own card does declare: the rule is about who speaks, not about cards.
    queued = alice.post("/detect", files=files)
    assert service.finished_job(queued.json()["job_id"])["status"] == "succeeded"
    assert ("org/other", "org/child", True) in edges(alice, "org/child")


def test_promoting_a_child_to_a_catalog_parent_needs_a_curator(service, family):
    alice, mallory = keys(service, "curator", "submitter")
    alice.post("/parents", data={"name": "org/base"}, files=upload(family.parents[1]))
    promote = {"name": "org/child", "register_as_parent": "true"}
    error = assert_error(
        mallory.post("/detect", data=promote, files=upload(family.child)), 403, "forbidden"
    )
    assert "curator" in error["message"] and "submitter" in error["message"]
    assert service.rows() == (1, 0)  # nothing stored for the refused request
    plain = mallory.post("/detect", data={"name": "org/child"}, files=upload(family.child))
    assert service.finished_job(plain.json()["job_id"])["status"] == "succeeded"
    assert alice.get("/models/org/child").json()["is_candidate"] is False
    # Even as its owner, a submitter cannot promote later; a curator can.
    assert_error(
        mallory.post("/detect", data=promote, files=upload(family.child)), 403, "forbidden"
    )
    queued = alice.post("/detect", data=promote, files=upload(family.child))
    assert service.finished_job(queued.json()["job_id"])["status"] == "succeeded"
    assert alice.get("/models/org/child").json()["is_candidate"] is True
    with service.factory() as session:
        owners = dict(session.execute(select(Model.name, Model.created_by)).tuples().all())
    assert owners["org/child"] != owners["org/base"]  # the child is Mallory's, still


def test_an_edge_that_would_close_a_cycle_is_kept_as_a_conflict_for_review(
    service, family, tmp_path
):
    alice, mallory = keys(service, "curator", "submitter")
    alice.post("/parents", data={"name": "org/base"}, files=upload(family.parents[1]))
    promote = {"name": "org/child", "register_as_parent": "true"}
    queued = alice.post("/detect", data=promote, files=upload(family.child))
    assert service.finished_job(queued.json()["job_id"])["status"] == "succeeded"
    assert edges(alice, "org/child") == {("org/base", "org/child", False)}
    # The owner re-submits org/base with a card naming its own child as its base: that edge
    # would close a cycle. It is refused, and kept as a conflict in the review queue.
    carded = tmp_path / "base-carded"
    carded.mkdir()
    for path in family.parents[1].iterdir():
        (carded / path.name).write_bytes(path.read_bytes())
    (carded / "README.md").write_text("---\nbase_model: org/child\n---\n")
    files = upload(carded, "model.safetensors", "config.json", "README.md")
    queued = alice.post("/detect", files=files)
    job = service.finished_job(queued.json()["job_id"])
    assert job["status"] == "succeeded", job
    assert [r["code"] for r in job["result"]["edges_refused"]] == ["cycle"]
    assert edges(alice, "org/base") == {("org/base", "org/child", False)}  # unchanged
    audit = mallory.get("/audit", params={"verdict": "conflict"}).json()
    [conflict] = audit["conflicts"]
    assert (conflict["parent"], conflict["child"]) == ("org/child", "org/base")
    assert conflict["kind"] == "conflict" and conflict["job_id"] == job["id"]
    assert "cycle" in conflict["detail"]["message"]


def test_deleting_or_stating_an_edge_is_a_logged_curator_action(service, family):
    alice, mallory = keys(service, "curator", "submitter")
    alice.post("/parents", data={"name": "org/base"}, files=upload(family.parents[1]))
    queued = alice.post("/detect", data={"name": "org/child"}, files=upload(family.child))
    assert service.finished_job(queued.json()["job_id"])["status"] == "succeeded"
    pair = {"parent": "org/base", "child": "org/child", "reason": "wrong"}
    assert_error(mallory.delete("/edges", params=pair), 403, "forbidden")
    assert_error(anonymous(service).delete("/edges", params=pair), 401, "unauthenticated")
    assert_error(alice.delete("/edges", params={**pair, "child": "org/base"}), 404)
    deleted = alice.delete("/edges", params={**pair, "reason": "a bad upload"})
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["method"] == "auto"  # the edge as it was
    assert edges(alice, "org/child") == set()
    # A curator states the right edge instead; a cycle would be refused at once.
    statement = {"parent": "org/child", "child": "org/base", "reason": "the card is right"}
    assert_error(mallory.post("/edges", json=statement), 403, "forbidden")
    stated = alice.post("/edges", json=statement)
    assert stated.status_code == 201, stated.text
    assert stated.json()["declared"] is True and stated.json()["evidence"]["source"] == "curator"
    backwards = {"parent": "org/base", "child": "org/child", "reason": "both ways"}
    assert_error(alice.post("/edges", json=backwards), 409, "cycle")
    log = alice.get("/graph/log").json()
    assert [(e["kind"], e["parent"], e["child"]) for e in log] == [
        ("edge_set", "org/child", "org/base"),
        ("edge_deleted", "org/base", "org/child"),
    ]
    assert log[1]["detail"]["reason"] == "a bad upload" and log[1]["key_id"] is not None
    assert alice.get("/graph/log", params={"kind": "conflict"}).json() == []


def test_a_conflict_proposes_the_direction_its_evidence_points(service, family):
    """A job on org/base's weights that infers its own child as its parent: the edge would
    close a cycle. The conflict says which way the edge should point, from which of the two lies
    nearer the family's centre (the job's outward log ratio), or that nothing says so."""
    import uuid

    from app.core.db import transaction
    from app.detection import service as detection
    from app.detection.models import Job

    (alice,) = keys(service, "curator")
    alice.post("/parents", data={"name": "org/base"}, files=upload(family.parents[1]))
    promote = {"name": "org/child", "register_as_parent": "true"}
    queued = alice.post("/detect", data=promote, files=upload(family.child))
    assert service.finished_job(queued.json()["job_id"])["status"] == "succeeded"
    with service.factory() as session:
        base = session.scalar(select(Model).where(Model.name == "org/base"))
    request = {"method": "auto", "write_edges": True, "declared": []}

    def infer_child_as_parent(direction: dict | None) -> None:
        job_id = str(uuid.uuid4())
        with transaction(service.factory) as session:
            session.add(Job(id=job_id, status="running", child_id=base.id, request=request))
        claimed = detection.Claimed(
            job_id, base.id, base.name, base.storage_path, base.sha256, request, [], 1
        )
        decision = {
            "parent": "org/child",
            "confidence": 0.9,
            "method": "auto",
            "best": "org/child",
            "margin": 3.0,
            "calibrated": True,
        }
        best = {"parent": "org/child", "score": 1.0, "scores": {}}
        result = {"decision": decision, "candidates": [best], "skipped": [], "direction": direction}
        detection.record(service.factory, claimed, result)

    infer_child_as_parent({"org/child": 0.4})  # the child lies farther out: a descendant
    infer_child_as_parent({"org/child": -0.4})  # the child lies nearer: the graph looks wrong
    infer_child_as_parent(None)  # too few candidates for direction evidence
    conflicts = alice.get("/audit", params={"verdict": "conflict"}).json()["conflicts"]
    none, nearer, farther = (c["detail"] for c in conflicts)  # newest first
    assert farther["proposed"] == {"parent": "org/base", "child": "org/child"}
    assert farther["direction_evidence"] == 0.4 and "org/base lies nearer" in farther["basis"]
    assert nearer["proposed"] == {"parent": "org/child", "child": "org/base"}
    assert none["proposed"] is None and "no direction evidence" in none["basis"]
    assert edges(alice, "org/child") == {("org/base", "org/child", False)}  # unchanged
