"""Fault-test fixtures: see tests/workspace.py and tests/mailserver.py."""

from tests.integration.conftest import dovecot
from tests.workspace import ROOT, Workspace, workspace

__all__ = ["ROOT", "Workspace", "dovecot", "workspace"]
