"""The audit verdict: the parent inferred from the weights against the parents declared.

- ``consistent``: the inferred parent is one of the declared ones;
- ``undisclosed``: a parent is inferred, nothing is declared;
- ``mismatch``: a declared parent is in the catalog but is not the inferred one (the inferred
  one, or "none", and the declared ones are both named);
- ``unverified``: parents are declared but none is in the catalog, so the declaration cannot be
  checked against the weights (the inferred parent, if any, is still reported);
- ``no_parent``: nothing inferred, nothing declared.
"""

from __future__ import annotations

from app.hub.declared import DeclaredParent

VERDICTS = ("consistent", "undisclosed", "mismatch", "unverified", "no_parent")


def audit_verdict(
    inferred: str | None,
    declared: list[DeclaredParent],
    in_catalog: dict[str, str],
    decision: dict,
) -> dict:
    """The verdict and its evidence. ``in_catalog`` maps declared names to catalog names (by
    name or hub ID); ``decision`` is the detection's decision (confidence, margin, method)."""
    known = {in_catalog[d.name] for d in declared if d.name in in_catalog}
    if not declared:
        verdict = "undisclosed" if inferred else "no_parent"
    elif inferred is not None and inferred in known:
        verdict = "consistent"
    elif known:
        verdict = "mismatch"
    else:
        verdict = "unverified"
    return {
        "verdict": verdict,
        "inferred": inferred,
        "declared": [{**d.to_dict(), "in_catalog": in_catalog.get(d.name)} for d in declared],
        "confidence": decision.get("confidence"),
        "method": decision.get("method"),
    }
