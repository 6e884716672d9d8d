"""Fault-test fixtures: see tests/workspace.py."""

from tests.workspace import ROOT, Workspace, workspace

__all__ = ["ROOT", "Workspace", "workspace"]
