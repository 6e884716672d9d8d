"""Integration-test fixtures: see tests/workspace.py."""

from collections.abc import Iterator

import pytest

from tests.mailserver import Dovecot
from tests.workspace import ROOT, Workspace, workspace

__all__ = ["ROOT", "Workspace", "workspace"]


@pytest.fixture
def dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dovecot]:
    """A fresh private dovecot per test (IMAP/IMAPS/POP3/POP3S on loopback), stopped after."""
    with Dovecot(tmp_path_factory.mktemp("dovecot")) as server:
        yield server
