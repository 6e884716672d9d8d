"""connectors.imap_protocol without a server: sequence sets, modified UTF-7 mailbox
names, quoting, dates, and parsing aioimaplib's response lines (untagged lines
without the leading "* ", literals as bytearray items, the tagged text last).

The response examples are real dovecot 2.3 answers, captured through aioimaplib."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.imap_protocol import (
    FetchedMessage,
    ListedFolder,
    UidRanges,
    compress_uids,
    decode_mailbox,
    encode_mailbox,
    expand_uids,
    parse_fetch,
    parse_internal_date,
    parse_list,
    parse_search,
    parse_select,
    parse_status,
    parse_vanished,
    quote,
    quote_mailbox,
    response_code,
    search_date,
    uid_chunks,
)

UIDS = st.sets(st.integers(min_value=1, max_value=2**32 - 1), max_size=300)
# Dense sets, so that ranges actually form.
DENSE_UIDS = st.sets(st.integers(min_value=1, max_value=400), max_size=300)
NAMES = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40)


# --- sequence sets -----------------------------------------------------------------------------


def test_compress_uids_makes_ranges() -> None:
    assert compress_uids([5, 1, 2, 3, 9, 10]) == "1:3,5,9:10"
    assert compress_uids([7]) == "7"
    assert compress_uids([]) == ""
    assert compress_uids([3, 3, 2]) == "2:3"


def test_uid_ranges_grow_at_the_top_and_below() -> None:
    ranges = UidRanges([1, 2, 3])
    ranges.add([4, 5, 7])
    assert ranges.sequence_set() == "1:5,7"
    ranges.add([9, 8, 12])
    assert ranges.sequence_set() == "1:5,7:9,12"
    ranges.add([6, 3])  # below the top: rebuilt
    assert ranges.sequence_set() == "1:9,12"
    ranges.add([])
    assert ranges.sequence_set() == "1:9,12"
    assert UidRanges().sequence_set() == ""


@given(st.lists(st.lists(st.integers(1, 300), max_size=30), max_size=8))
def test_uid_ranges_name_the_union_of_what_was_added(additions: list[list[int]]) -> None:
    ranges = UidRanges()
    added: set[int] = set()
    for uids in additions:
        ranges.add(uids)
        added.update(uids)
        assert expand_uids(ranges.sequence_set()) == added
        assert ranges.sequence_set() == compress_uids(added)


def test_expand_uids_reads_numbers_and_ranges_in_either_order() -> None:
    assert expand_uids("1:3,5,9:10") == {1, 2, 3, 5, 9, 10}
    assert expand_uids("5:3") == {3, 4, 5}
    assert expand_uids("") == set()
    assert expand_uids("4,,6") == {4, 6}


@given(UIDS)
def test_expand_inverts_compress(uids: set[int]) -> None:
    assert expand_uids(compress_uids(uids)) == uids


@given(DENSE_UIDS)
def test_compress_uses_maximal_ascending_ranges(uids: set[int]) -> None:
    parts = [p for p in compress_uids(uids).split(",") if p]
    bounds = []
    for part in parts:
        low, _, high = part.partition(":")
        bounds.append((int(low), int(high or low)))
        if high:
            assert int(low) < int(high)  # "a:a" is written "a"
    # Ascending, and never two ranges that could have been one.
    for (_, previous_high), (next_low, _) in pairwise(bounds):
        assert next_low > previous_high + 1
    runs = sum(1 for uid in uids if uid - 1 not in uids)
    assert len(parts) == runs


def test_uid_chunks_cuts_sorted_uids() -> None:
    assert uid_chunks([5, 1, 4, 2, 3], 2) == [[1, 2], [3, 4], [5]]
    assert uid_chunks([], 3) == []


@given(st.lists(st.integers(min_value=1, max_value=10**6), unique=True), st.integers(1, 50))
def test_uid_chunks_are_bounded_consecutive_and_complete(uids: list[int], size: int) -> None:
    chunks = uid_chunks(uids, size)
    assert [uid for chunk in chunks for uid in chunk] == sorted(uids)
    assert all(1 <= len(chunk) <= size for chunk in chunks)
    assert all(len(chunk) == size for chunk in chunks[:-1])


# --- mailbox names -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "encoded"),
    [
        ("Envoyés", "Envoy&AOk-s"),
        ("&", "&-"),
        ("R&D", "R&-D"),
        ("Entwürfe", "Entw&APw-rfe"),
        ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),  # RFC 3501 5.1.3
        ("INBOX", "INBOX"),
        ("", ""),
    ],
)
def test_modified_utf7_known_vectors(name: str, encoded: str) -> None:
    assert encode_mailbox(name) == encoded
    assert decode_mailbox(encoded) == name


def test_encoding_outside_the_bmp_uses_surrogate_pairs() -> None:
    encoded = encode_mailbox("Ideas 💡")
    assert encoded.startswith("Ideas &") and encoded.endswith("-")
    assert decode_mailbox(encoded) == "Ideas 💡"


@given(NAMES)
def test_mailbox_names_round_trip(name: str) -> None:
    encoded = encode_mailbox(name)
    assert all(0x20 <= ord(c) <= 0x7E for c in encoded)
    assert decode_mailbox(encoded) == name


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40))
def test_printable_ascii_without_ampersand_is_unchanged(name: str) -> None:
    assert encode_mailbox(name) == name.replace("&", "&-")


@pytest.mark.parametrize("raw", ["R&D-Team", "Tom&Jerry-Files", "&AOk", "a&b"])
def test_undecodable_runs_stay_as_they_are(raw: str) -> None:
    assert decode_mailbox(raw) == raw


def test_a_run_of_non_base64_characters_stays_as_it_is() -> None:
    assert decode_mailbox("Notes&!!-") == "Notes&!!-"


def test_quote_escapes_backslash_and_double_quote() -> None:
    assert quote("plain") == '"plain"'
    assert quote('say "hi"') == '"say \\"hi\\""'
    assert quote("a\\b") == '"a\\\\b"'


def test_quote_mailbox_encodes_then_quotes() -> None:
    assert quote_mailbox("Envoyés") == '"Envoy&AOk-s"'
    assert quote_mailbox("Sent (old)") == '"Sent (old)"'
    assert quote_mailbox("R&D") == '"R&-D"'


# --- dates -------------------------------------------------------------------------------------


def test_search_date_is_the_utc_day() -> None:
    assert search_date(datetime(2026, 2, 1, 12, 0, tzinfo=UTC)) == "1-Feb-2026"
    assert search_date(datetime(2026, 12, 31, 23, 59, tzinfo=UTC)) == "31-Dec-2026"
    # 01:00 at UTC+2 is still the previous day in UTC.
    plus_two = timezone(timedelta(hours=2))
    assert search_date(datetime(2026, 2, 1, 1, 0, tzinfo=plus_two)) == "31-Jan-2026"
    assert search_date(datetime(2026, 7, 4)) == "4-Jul-2026"


def test_parse_internal_date() -> None:
    assert parse_internal_date("21-Nov-2026 14:43:28 +0000") == datetime(
        2026, 11, 21, 14, 43, 28, tzinfo=UTC
    )
    # date-day-fixed: a single-digit day is space-padded.
    parsed = parse_internal_date(" 1-Nov-2026 13:59:54 -0500")
    assert parsed == datetime(2026, 11, 1, 18, 59, 54, tzinfo=UTC)
    assert parsed is not None and parsed.utcoffset() == timedelta(hours=-5)


@pytest.mark.parametrize("text", ["", "yesterday", "21-Nov-2026", "32-Nov-2026 14:43:28 +0000"])
def test_parse_internal_date_is_none_when_malformed(text: str) -> None:
    assert parse_internal_date(text) is None


# --- FETCH -------------------------------------------------------------------------------------

SMALL_BODY = b"From: a@b\r\nSubject: hi\r\n\r\nbody\r\n"
BIG_BODY = (b"From: c@d.example\r\nSubject: second\r\n\r\n" + b"x" * 300)[:222] + b"\r\n"
FETCH_WITH_BODIES: list[bytes | bytearray] = [
    b'1 FETCH (UID 1 FLAGS () MODSEQ (5) RFC822.SIZE 32 INTERNALDATE "21-Nov-2026 13:59:54 +0000"'
    b" BODY[] {32}",
    bytearray(SMALL_BODY),
    b")",
    b"2 FETCH (UID 2 FLAGS (\\Recent) MODSEQ (5) RFC822.SIZE 224 INTERNALDATE "
    b'"21-Nov-2026 14:43:28 +0000" BODY[] {224}',
    bytearray(BIG_BODY),
    b")",
    b"Fetch completed (0.002 + 0.000 + 0.001 secs).",
]
FLAGS_ONLY: list[bytes | bytearray] = [
    b"1 FETCH (UID 1 FLAGS () MODSEQ (5))",
    b"2 FETCH (UID 2 FLAGS (\\Recent) MODSEQ (5))",
    b"Fetch completed (0.001 + 0.000 secs).",
]


def test_fixture_bodies_have_the_announced_sizes() -> None:
    assert len(SMALL_BODY) == 32 and len(BIG_BODY) == 224


def test_parse_fetch_with_bodies() -> None:
    assert parse_fetch(FETCH_WITH_BODIES) == [
        FetchedMessage(
            uid=1,
            flags=(),
            modseq=5,
            size=32,
            internal_date=datetime(2026, 11, 21, 13, 59, 54, tzinfo=UTC),
            body=SMALL_BODY,
        ),
        FetchedMessage(
            uid=2,
            flags=("\\Recent",),
            modseq=5,
            size=224,
            internal_date=datetime(2026, 11, 21, 14, 43, 28, tzinfo=UTC),
            body=BIG_BODY,
        ),
    ]


def test_parse_fetch_flags_only() -> None:
    assert parse_fetch(FLAGS_ONLY) == [
        FetchedMessage(uid=1, flags=(), modseq=5),
        FetchedMessage(uid=2, flags=("\\Recent",), modseq=5),
    ]
    assert all(m.body is None and m.internal_date is None for m in parse_fetch(FLAGS_ONLY))


def test_parse_fetch_reads_attributes_after_the_literal() -> None:
    lines: list[bytes | bytearray] = [
        b"3 FETCH (BODY[] {5}",
        bytearray(b"hello"),
        b" UID 7 FLAGS (\\Seen \\Answered))",
        b"Fetch completed.",
    ]
    assert parse_fetch(lines) == [
        FetchedMessage(uid=7, flags=("\\Seen", "\\Answered"), body=b"hello")
    ]


def test_parse_fetch_takes_bodies_as_data_whatever_they_contain() -> None:
    tricky = (
        b"Subject: (unbalanced (((\r\n\r\n"
        b"2 FETCH (UID 99 FLAGS (\\Deleted) BODY[] {3}\r\n"
        b"* 3 FETCH (UID 98)\r\n"
        b"A001 OK Fetch completed.\r\n"
        b")))\r\n"
    )
    lines: list[bytes | bytearray] = [
        b"1 FETCH (UID 10 FLAGS (\\Seen) BODY[] {%d}" % len(tricky),
        bytearray(tricky),
        b")",
        b"2 FETCH (UID 11 FLAGS () BODY[] {4}",
        bytearray(b"))))"),
        b")",
        b"Fetch completed.",
    ]
    assert parse_fetch(lines) == [
        FetchedMessage(uid=10, flags=("\\Seen",), body=tricky),
        FetchedMessage(uid=11, flags=(), body=b"))))"),
    ]


def test_parse_fetch_ignores_items_without_uid_and_other_lines() -> None:
    lines: list[bytes | bytearray] = [
        b"4 EXISTS",
        b"1 FETCH (FLAGS (\\Seen))",  # an unsolicited flag update carries no UID
        b"VANISHED 3",
        b"2 FETCH (UID 5 FLAGS (\\Flagged))",
        b"Fetch completed.",
    ]
    assert parse_fetch(lines) == [FetchedMessage(uid=5, flags=("\\Flagged",))]


def test_parse_fetch_ignores_a_literal_of_an_item_without_uid() -> None:
    lines: list[bytes | bytearray] = [
        b"1 FETCH (BODY[] {3}",
        bytearray(b"abc"),
        b")",
        b"2 FETCH (UID 8 BODY[] {3}",
        bytearray(b"def"),
        b")",
        b"Fetch completed.",
    ]
    assert parse_fetch(lines) == [FetchedMessage(uid=8, body=b"def")]


def test_parse_fetch_empty_literal_is_an_empty_body() -> None:
    lines: list[bytes | bytearray] = [
        b"1 FETCH (UID 4 RFC822.SIZE 0 BODY[] {0}",
        bytearray(b""),
        b")",
        b"2 FETCH (UID 5 RFC822.SIZE 1 BODY[] {1}",
        bytearray(b"x"),
        b")",
        b"Fetch completed.",
    ]
    messages = parse_fetch(lines)
    assert [(m.uid, m.body, m.size) for m in messages] == [(4, b"", 0), (5, b"x", 1)]


def test_parse_fetch_of_an_empty_answer() -> None:
    assert parse_fetch([b"Fetch completed."]) == []
    assert parse_fetch([]) == []


# --- SELECT / EXAMINE, VANISHED ----------------------------------------------------------------

EXAMINE_ANSWER: list[bytes | bytearray] = [
    b"FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)",
    b"OK [PERMANENTFLAGS ()] Read-only mailbox.",
    b"4 EXISTS",
    b"3 RECENT",
    b"OK [UNSEEN 1] First unseen.",
    b"OK [UIDVALIDITY 1795269594] UIDs valid",
    b"OK [UIDNEXT 5] Predicted next UID",
    b"OK [HIGHESTMODSEQ 5] Highest",
    b"2 FETCH (UID 2 FLAGS (\\Recent) MODSEQ (5))",
    b"VANISHED (EARLIER) 1,3:4",
    b"[READ-ONLY] Examine completed (0.001 + 0.000 secs).",
]


def test_parse_select_of_a_real_examine_answer() -> None:
    state = parse_select(EXAMINE_ANSWER)
    assert state.exists == 4
    assert state.uidvalidity == 1795269594
    assert state.uidnext == 5
    assert state.highestmodseq == 5
    assert state.read_only is True
    assert state.vanished == {1, 3, 4}
    assert state.changed == [FetchedMessage(uid=2, flags=("\\Recent",), modseq=5)]


def test_parse_select_read_write_without_condstore() -> None:
    state = parse_select(
        [
            b"FLAGS (\\Seen)",
            b"12 EXISTS",
            b"OK [UIDVALIDITY 7] UIDs valid",
            b"OK [UIDNEXT 40] Predicted next UID",
            b"OK [NOMODSEQ] No permanent modsequences",
            b"[READ-WRITE] Select completed.",
        ]
    )
    assert (state.exists, state.uidvalidity, state.uidnext, state.highestmodseq) == (12, 7, 40, 0)
    assert state.read_only is False
    assert state.vanished == set() and state.changed == []


def test_parse_select_ignores_responses_for_the_previous_mailbox() -> None:
    lines: list[bytes | bytearray] = [
        b"VANISHED 2",  # INBOX (still selected) expunged UID 2
        b"9 EXISTS",
        b"OK [CLOSED] Previous mailbox closed.",
        b"FLAGS (\\Seen)",
        b"3 EXISTS",
        b"OK [UIDVALIDITY 11] UIDs valid",
        b"OK [UIDNEXT 4] Predicted next UID",
        b"OK [HIGHESTMODSEQ 8] Highest",
        b"VANISHED (EARLIER) 5",
        b"[READ-ONLY] Examine completed.",
    ]
    state = parse_select(lines)
    assert state.exists == 3
    assert state.vanished == {5}


def test_parse_vanished_reads_both_forms_and_skips_literals() -> None:
    lines: list[bytes | bytearray] = [
        b"VANISHED (EARLIER) 1,3:4",
        b"VANISHED 10:11",
        bytearray(b"VANISHED 99"),
        b"2 FETCH (UID 2 FLAGS ())",
        b"OK done",
    ]
    assert parse_vanished(lines) == {1, 3, 4, 10, 11}
    assert parse_vanished([b"Examine completed."]) == set()


# --- SEARCH, STATUS ----------------------------------------------------------------------------


def test_parse_search() -> None:
    assert parse_search([b"1 2 3 4", b"Search completed (0.001 + 0.000 secs)."]) == [1, 2, 3, 4]
    assert parse_search([b"SEARCH 5 9", b"Search completed (0.001 secs)."]) == [5, 9]
    assert parse_search([b"Search completed."]) == []
    assert parse_search([b"", b"Search completed."]) == []


def test_parse_search_never_reads_the_tagged_line() -> None:
    # The timing numbers of the tagged text are not UIDs.
    assert parse_search([b"7", b"Search completed 12 34."]) == [7]


def test_parse_status() -> None:
    lines: list[bytes | bytearray] = [
        b"INBOX (MESSAGES 4 UIDNEXT 5 UIDVALIDITY 1795269594 HIGHESTMODSEQ 5)",
        b"Status completed (0.001 + 0.000 secs).",
    ]
    assert parse_status(lines) == {
        "MESSAGES": 4,
        "UIDNEXT": 5,
        "UIDVALIDITY": 1795269594,
        "HIGHESTMODSEQ": 5,
    }


def test_parse_status_of_a_quoted_name_with_spaces_and_parentheses() -> None:
    lines: list[bytes | bytearray] = [
        b'"Sent (old)" (MESSAGES 1 UIDNEXT 2)',
        b"Status completed.",
    ]
    assert parse_status(lines) == {"MESSAGES": 1, "UIDNEXT": 2}


def test_parse_status_without_an_answer_line_is_empty() -> None:
    assert parse_status([b"Status completed."]) == {}
    assert parse_status([]) == {}


# --- LIST --------------------------------------------------------------------------------------

LIST_ANSWER: list[bytes | bytearray] = [
    b'(\\HasNoChildren \\Sent) "/" Sent',
    b'(\\HasNoChildren) "/" INBOX',
    b'(\\Noselect) "/" Archive',
    b'() "." "Envoy&AOk-s"',
    b'() "/" {5}',
    bytearray(b'A "b"'),
    b"List completed.",
]


def test_parse_list() -> None:
    assert parse_list(LIST_ANSWER) == [
        ListedFolder("Sent", frozenset({"\\hasnochildren", "\\sent"}), "/"),
        ListedFolder("INBOX", frozenset({"\\hasnochildren"}), "/"),
        ListedFolder("Archive", frozenset({"\\noselect"}), "/"),
        ListedFolder("Envoyés", frozenset(), "."),
        ListedFolder('A "b"', frozenset(), "/"),
    ]


def test_parse_list_selectable() -> None:
    selectable = {f.name: f.selectable for f in parse_list(LIST_ANSWER)}
    assert selectable == {
        "Sent": True,
        "INBOX": True,
        "Archive": False,
        "Envoyés": True,
        'A "b"': True,
    }
    gone = parse_list([b'(\\NonExistent \\Subscribed) "/" Old', b"List completed."])
    assert [f.selectable for f in gone] == [False]


def test_parse_list_nil_delimiter_escapes_and_list_keyword() -> None:
    folders = parse_list(
        [
            b"() NIL INBOX",
            b'LIST (\\Drafts) "\\\\" "Work\\\\Drafts"',
            b'() "/" "say \\"hi\\""',
            b"List completed.",
        ]
    )
    assert folders == [
        ListedFolder("INBOX", frozenset(), None),
        ListedFolder("Work\\Drafts", frozenset({"\\drafts"}), "\\"),
        ListedFolder('say "hi"', frozenset(), "/"),
    ]


def test_parse_list_of_nothing() -> None:
    assert parse_list([b"List completed."]) == []


# --- response codes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "code"),
    [
        ([b"[AUTHENTICATIONFAILED] Authentication failed."], "AUTHENTICATIONFAILED"),
        ([b"3 EXISTS", b"[NONEXISTENT] Mailbox doesn't exist: Foo"], "NONEXISTENT"),
        ([b"[READ-ONLY] Examine completed."], "READ-ONLY"),
        ([b"Authentication failed."], None),
        ([], None),
    ],
)
def test_response_code_is_read_from_the_tagged_line(
    lines: list[bytes | bytearray], code: str | None
) -> None:
    assert response_code(lines) == code


def test_response_code_ignores_codes_on_untagged_lines() -> None:
    assert response_code([b"OK [UIDNEXT 5] Predicted", b"Examine completed."]) is None
