"""processors.correlate: tracking tokens, reply chains and correlation precedence."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processors.correlate import correlate, find_tokens, make_token, reply_chain
from processors.directory import TrackedRef
from schemas.base import RecordRef
from schemas.config import CorrelationConfig
from schemas.crm import CorrelationMethod
from tests.unit.helpers import email

DEFAULT = CorrelationConfig()


# -- find_tokens ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "tokens"),
    [
        ("CRM:0001001", ["CRM:0001001"]),
        ("[CRM:0001001]", ["CRM:0001001"]),
        ("(crm: 0001001)", ["CRM:0001001"]),
        ("RE: x CRM:0001001", ["CRM:0001001"]),
        ("RE: FW: Quote [CRM:0001001] for you", ["CRM:0001001"]),
        ("Crm : 0001001", ["CRM:0001001"]),
        ("CRM:0001001 and CRM:0002002", ["CRM:0001001", "CRM:0002002"]),
        ("CRM:00010011", ["CRM:00010011"]),  # longer counters are valid tokens
        ("CRM:0001001x", ["CRM:0001001"]),
        ("XCRM:0001001", []),  # inside a word
        ("1CRM:0001001", []),
        ("ACRM:0001001", []),
        ("CRM:000100", []),  # too few digits
        ("CRM:", []),
        ("CRM-0001001", []),
        ("no token here", []),
        ("", []),
    ],
)
def test_find_tokens_default_prefix(subject: str, tokens: list[str]) -> None:
    assert find_tokens(subject, DEFAULT) == tokens


def test_find_tokens_finds_earlier_prefixes_in_order_of_appearance() -> None:
    config = CorrelationConfig(token_prefix="ACME", earlier_token_prefixes=["CRM", "crmold"])
    subject = "x CRM:0001001 ACME:0002002 [crmold:0003003]"
    assert find_tokens(subject, config) == ["CRM:0001001", "ACME:0002002", "CRMOLD:0003003"]


def test_find_tokens_prefers_the_longest_matching_prefix() -> None:
    config = CorrelationConfig(token_prefix="CRM", earlier_token_prefixes=["CRMX"])
    assert find_tokens("CRMX:0001001", config) == ["CRMX:0001001"]


def test_find_tokens_needs_digits_for_the_configured_widths() -> None:
    config = CorrelationConfig(token_user_digits=4, token_counter_digits=5)  # 1 + 4 + 5 = 10
    assert find_tokens("CRM:000000001", config) == []
    assert find_tokens("CRM:0000000001", config) == ["CRM:0000000001"]


# -- make_token -----------------------------------------------------------------


def test_make_token_pads_user_and_counter() -> None:
    assert make_token(DEFAULT, 1, 1) == "CRM:0001001"
    config = CorrelationConfig(token_prefix="acme", token_base_number=5)
    assert make_token(config, 7, 42) == "ACME:5007042"


ASCII_PREFIX = st.text(alphabet=string.ascii_letters + string.digits, min_size=1, max_size=20)


@given(
    prefix=ASCII_PREFIX,
    user=st.integers(0, 999),
    counter=st.integers(0, 999),
    base=st.integers(0, 10**6),
    lead=st.sampled_from(["", "RE: ", "FW: Quote ", "Question about ["]),
)
def test_make_token_round_trips_through_find_tokens(
    prefix: str, user: int, counter: int, base: int, lead: str
) -> None:
    config = CorrelationConfig(token_prefix=prefix, token_base_number=base)
    token = make_token(config, user, counter)
    assert find_tokens(f"{lead}{token}", config) == [token]
    assert find_tokens(f"{lead}{token.lower()} trailing words", config) == [token]


@given(
    user_digits=st.integers(1, 6),
    counter_digits=st.integers(1, 6),
    user=st.integers(0, 10**6),
    counter=st.integers(0, 10**6),
)
def test_make_token_round_trips_for_any_digit_widths(
    user_digits: int, counter_digits: int, user: int, counter: int
) -> None:
    config = CorrelationConfig(token_user_digits=user_digits, token_counter_digits=counter_digits)
    token = make_token(config, user, counter)
    assert find_tokens(f"Re: [{token}]", config) == [token]


@pytest.mark.parametrize("prefix", ["ß", "", "A" * 21, "CRM:", "C R M"])
def test_a_prefix_that_is_not_1_to_20_ascii_letters_or_digits_is_rejected(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        CorrelationConfig(token_prefix=prefix)
    with pytest.raises(ValueError, match="prefix"):
        CorrelationConfig(earlier_token_prefixes=[prefix])


# -- reply_chain ----------------------------------------------------------------


def test_reply_chain_in_reply_to_first_then_references_newest_first() -> None:
    item = email(
        "mb-alice",
        "1",
        "me@x.example",
        "dana@contoso.example",
        [],
        in_reply_to="p@x.example",
        references=["root@x.example", "mid@x.example", "p@x.example"],
    )
    assert reply_chain(item) == ["p@x.example", "mid@x.example", "root@x.example"]


def test_reply_chain_without_in_reply_to_is_references_newest_first() -> None:
    item = email("mb", "1", "m@x", "a@x", [], references=["r1@x", "r2@x", "r3@x"])
    assert reply_chain(item) == ["r3@x", "r2@x", "r1@x"]


def test_reply_chain_has_no_duplicates() -> None:
    item = email("mb", "1", "m@x", "a@x", [], in_reply_to="r1@x", references=["r1@x", "r2@x"])
    assert reply_chain(item) == ["r1@x", "r2@x"]


def test_reply_chain_of_a_new_message_is_empty() -> None:
    assert reply_chain(email("mb", "1", "m@x", "a@x", [])) == []


@given(
    st.lists(st.sampled_from(["a@x", "b@x", "c@x", "d@x"]), max_size=6),
    st.none() | st.sampled_from(["a@x", "e@x"]),
)
def test_reply_chain_is_unique_and_covers_every_id(refs: list[str], parent: str | None) -> None:
    chain = reply_chain(email("mb", "1", "m@x", "a@x", [], in_reply_to=parent, references=refs))
    assert len(chain) == len(set(chain))
    assert set(chain) == set(refs) | ({parent} if parent else set())
    if parent:
        assert chain[0] == parent


# -- correlate ------------------------------------------------------------------


PARENT = TrackedRef("act-parent", "p@x.example", "conv-1", RecordRef("opportunity", "o1"))
ROOT = TrackedRef("act-root", "root@x.example", "conv-1")
OLDER = TrackedRef("act-older", "older@x.example", "conv-2")
TOKENED = TrackedRef("act-token", "t@x.example", "conv-3", tracking_token="CRM:0001001")

BY_ID = {ref.message_id: ref for ref in (PARENT, ROOT, OLDER, TOKENED)}
BY_TOKEN = {"CRM:0001001": TOKENED}


def by_id(message_id: str) -> TrackedRef | None:
    return BY_ID.get(message_id)


def by_token(token: str) -> TrackedRef | None:
    return BY_TOKEN.get(token)


def test_in_reply_to_beats_references_and_token() -> None:
    item = email(
        "mb",
        "1",
        "me@x.example",
        "a@x",
        [],
        subject="RE: CRM:0001001",
        in_reply_to="p@x.example",
        references=["root@x.example", "p@x.example"],
    )
    found = correlate(item, by_id, by_token, DEFAULT)
    assert found is not None
    assert found.method == CorrelationMethod.IN_REPLY_TO
    assert found.target == PARENT
    assert found.matched == "p@x.example"
    assert found.rank == 0


def test_newest_tracked_reference_wins_when_in_reply_to_is_not_tracked() -> None:
    item = email(
        "mb",
        "1",
        "me@x.example",
        "a@x",
        [],
        subject="RE: CRM:0001001",
        in_reply_to="unknown@x.example",
        references=["root@x.example", "older@x.example", "unknown@x.example"],
    )
    found = correlate(item, by_id, by_token, DEFAULT)
    assert found is not None
    assert found.method == CorrelationMethod.IN_REPLY_TO
    assert found.target == OLDER
    assert found.rank == 1  # second entry of the reply chain


def test_references_beat_token() -> None:
    item = email(
        "mb", "1", "me@x.example", "a@x", [], subject="CRM:0001001", references=["root@x.example"]
    )
    found = correlate(item, by_id, by_token, DEFAULT)
    assert found is not None
    assert (found.method, found.target) == (CorrelationMethod.IN_REPLY_TO, ROOT)


def test_token_is_used_when_no_reply_header_is_tracked() -> None:
    item = email(
        "mb", "1", "me@x.example", "a@x", [], subject="Re: [crm: 0001001]", in_reply_to="no@x"
    )
    found = correlate(item, by_id, by_token, DEFAULT)
    assert found is not None
    assert found.method == CorrelationMethod.TRACKING_TOKEN
    assert found.target == TOKENED
    assert found.matched == "CRM:0001001"
    assert found.rank > 0


def test_token_rank_is_worse_than_any_reply_chain_rank() -> None:
    by_chain = correlate(
        email(
            "mb",
            "1",
            "m@x",
            "a@x",
            [],
            references=["root@x.example"] + [f"{i}@x" for i in range(50)],
        ),
        by_id,
        by_token,
        DEFAULT,
    )
    by_tok = correlate(
        email("mb", "1", "m@x", "a@x", [], subject="CRM:0001001"), by_id, by_token, DEFAULT
    )
    assert by_chain is not None and by_tok is not None
    assert by_chain.rank < by_tok.rank


def test_nothing_tracked_is_no_correlation() -> None:
    item = email("mb", "1", "me@x", "a@x", [], subject="CRM:0009999", in_reply_to="nobody@x")
    assert correlate(item, by_id, by_token, DEFAULT) is None


def test_in_reply_to_switched_off_falls_through_to_token() -> None:
    config = CorrelationConfig(in_reply_to=False)
    item = email("mb", "1", "me@x", "a@x", [], subject="CRM:0001001", in_reply_to="p@x.example")
    found = correlate(item, by_id, by_token, config)
    assert found is not None
    assert found.method == CorrelationMethod.TRACKING_TOKEN


def test_in_reply_to_switched_off_ignores_reply_headers() -> None:
    config = CorrelationConfig(in_reply_to=False)
    item = email("mb", "1", "me@x", "a@x", [], in_reply_to="p@x.example")
    assert correlate(item, by_id, by_token, config) is None


def test_tracking_token_switched_off_ignores_tokens() -> None:
    config = CorrelationConfig(tracking_token=False)
    item = email("mb", "1", "me@x", "a@x", [], subject="CRM:0001001")
    assert correlate(item, by_id, by_token, config) is None


def test_both_methods_switched_off_never_correlates() -> None:
    config = CorrelationConfig(in_reply_to=False, tracking_token=False)
    item = email("mb", "1", "me@x", "a@x", [], subject="CRM:0001001", in_reply_to="p@x.example")
    assert correlate(item, by_id, by_token, config) is None


def test_an_email_never_correlates_to_itself_by_reply_headers() -> None:
    item = email(
        "mb",
        "1",
        "p@x.example",
        "a@x",
        [],
        in_reply_to="p@x.example",
        references=["root@x.example", "p@x.example"],
    )
    found = correlate(item, by_id, by_token, DEFAULT)
    assert found is not None
    assert found.target == ROOT  # skipped itself, went on down the chain


def test_an_email_never_correlates_to_itself_by_token() -> None:
    # The tracked email that carries the token is seen again (e.g. a copy in Sent).
    item = email("mb", "1", "t@x.example", "a@x", [], subject="Quote CRM:0001001")
    assert correlate(item, by_id, by_token, DEFAULT) is None


def test_correlation_uses_the_first_tracked_token() -> None:
    other = TrackedRef("act-2", "t2@x.example", "conv-9", tracking_token="CRM:0002002")
    tokens = {"CRM:0001001": TOKENED, "CRM:0002002": other}
    item = email("mb", "1", "me@x", "a@x", [], subject="CRM:0009999 CRM:0002002 CRM:0001001")
    found = correlate(item, by_id, tokens.get, DEFAULT)
    assert found is not None
    assert found.target == other


def test_correlate_is_pure() -> None:
    item = email(
        "mb", "1", "me@x", "a@x", [], subject="CRM:0001001", references=["older@x.example"]
    )
    assert correlate(item, by_id, by_token, DEFAULT) == correlate(item, by_id, by_token, DEFAULT)
