"""Errors of the lineage graph, raised where the fault is found."""

from __future__ import annotations

from app.engine.errors import LineageError


class SelfEdge(LineageError):
    """An edge from a model to itself."""

    code = "self_edge"


class CycleRefused(LineageError):
    """An edge that would make a model its own ancestor."""

    code = "cycle"
    status = 409


class UnknownEdge(LineageError):
    """No edge joins those two models."""

    code = "unknown_edge"
    status = 404
