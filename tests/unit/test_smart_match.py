"""Smart matching: subject and address hashes, the match rule, and the index."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processors.smart_match import (
    SmartIndex,
    matches,
    normalize_subject,
    smart_key,
)
from schemas.config import SmartMatchingConfig

DEFAULT = SmartMatchingConfig()
SENT = datetime(2026, 3, 30, 10, 15, tzinfo=UTC)
ALICE, BOB, CAROL = "alice@contoso.example", "bob@northwind.example", "carol@northwind.example"


@pytest.mark.parametrize(
    ("subject", "normalized"),
    [
        ("RE: Quarterly figures", "quarterly figures"),
        ("  re:FW: AW:  Quarterly figures", "quarterly figures"),
        ("Fwd: RE : Quarterly Figures", "quarterly figures"),
        ("Quarterly figures: part 2", "quarterly figures: part 2"),  # only leading prefixes
        ("STRASSE", "strasse"),
        ("", ""),
    ],
)
def test_subject_prefixes_are_stripped_and_case_folded(subject: str, normalized: str) -> None:
    assert normalize_subject(subject, DEFAULT) == normalized


def test_keys_hash_words_and_unique_addresses() -> None:
    key = smart_key("RE: Quarterly figures", [ALICE, BOB, ALICE.upper(), " "], DEFAULT)
    assert len(key.subject) == 2
    assert len(key.addresses) == 2
    assert key == smart_key("quarterly FIGURES", [BOB, ALICE], DEFAULT)


def test_at_most_max_hashes_subject_words() -> None:
    subject = " ".join(f"word{n}" for n in range(50))
    assert len(smart_key(subject, [], DEFAULT).subject) == 20
    assert len(smart_key(subject, [], SmartMatchingConfig(max_hashes=5)).subject) == 5


@pytest.mark.parametrize(
    ("subject", "addresses", "config", "expected"),
    [
        ("RE: Quarterly figures", [ALICE, BOB], DEFAULT, True),
        ("RE: Quarterly figures", [ALICE, CAROL], DEFAULT, False),  # one common address
        (
            "RE: Quarterly figures",
            [ALICE, CAROL],
            SmartMatchingConfig(min_common_addresses=1),
            True,
        ),
        ("RE: Quarterly figures 2026", [ALICE, BOB], DEFAULT, False),  # one word more
        ("RE: Quarterly figures 2026", [ALICE, BOB], SmartMatchingConfig(subject_delta=1), True),
        ("Something else", [ALICE, BOB], SmartMatchingConfig(subject_delta=5), False),
        ("", [ALICE, BOB], DEFAULT, False),
    ],
)
def test_the_match_rule(
    subject: str, addresses: list[str], config: SmartMatchingConfig, expected: bool
) -> None:
    tracked = smart_key("Quarterly figures", [ALICE, BOB], config)
    assert matches(smart_key(subject, addresses, config), tracked, config) is expected


def test_index_finds_the_latest_match_within_the_window() -> None:
    index = SmartIndex(DEFAULT)
    key = smart_key("Quarterly figures", [ALICE, BOB], DEFAULT)
    index.add("old", key, SENT - timedelta(days=100))
    index.add("b-recent", key, SENT - timedelta(days=2))
    index.add("a-recent", key, SENT - timedelta(days=2))
    index.add("later", key, SENT + timedelta(days=1))
    reply = smart_key("RE: quarterly figures", [BOB, ALICE, CAROL], DEFAULT)
    assert index.best_match(reply, SENT) == "a-recent"  # newest in window; tie: smallest id
    index.remove("a-recent")
    assert index.best_match(reply, SENT) == "b-recent"
    assert index.best_match(reply, None) == "later"  # undated: the window does not apply
    assert index.prune(SENT - timedelta(days=90)) == 1
    assert len(index) == 2


def test_index_with_allowed_difference_searches_postings() -> None:
    config = SmartMatchingConfig(subject_delta=1)
    index = SmartIndex(config)
    index.add("x", smart_key("Quarterly figures for March", [ALICE, BOB], config), SENT)
    index.add("y", smart_key("Holiday plans", [ALICE, BOB], config), SENT)
    found = index.best_match(smart_key("RE: quarterly figures march", [ALICE, BOB], config), SENT)
    assert found == "x"
    assert index.best_match(smart_key("Holiday", [ALICE, BOB], config), SENT) == "y"
    assert index.best_match(smart_key("Budget", [ALICE, BOB], config), SENT) is None


def test_re_adding_replaces_and_empty_subjects_are_not_indexed() -> None:
    index = SmartIndex(DEFAULT)
    index.add("a", smart_key("Quarterly figures", [ALICE, BOB], DEFAULT), SENT)
    index.add("a", smart_key("Holiday plans", [ALICE, BOB], DEFAULT), SENT)
    assert index.best_match(smart_key("Quarterly figures", [ALICE, BOB], DEFAULT), SENT) is None
    index.add("b", smart_key("RE:", [ALICE, BOB], DEFAULT), SENT)
    assert len(index) == 1


@given(st.text(max_size=300), st.lists(st.text(max_size=40), max_size=8))
def test_keys_of_any_text_never_raise(subject: str, addresses: list[str]) -> None:
    key = smart_key(subject, addresses, DEFAULT)
    assert len(key.subject) <= DEFAULT.max_hashes
    assert len(key.addresses) <= len(addresses)
