"""The pure parts of the dead-letter queue: FloodGuard (consecutive and ratio rules),
the headers of replayed and reinserted letters, and what replay decides per letter."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import ConfigError, load_config
from pipeline.dlq import Action, Policy, ReplayReport, letter_problem, matches_topic, plan
from schemas import dlq
from schemas.config import ProcessingConfig, SinkConfig
from schemas.crm import CrmRecord
from schemas.dlq import DeadLetter, DeadLetterFlood, FloodGuard
from schemas.errors import StopAndAlert
from schemas.topics import CRM_RECORDS, MAIL_CHANGES, codec

PREFIX = "tidings."
FAILED_AT = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)


def feed(guard: FloodGuard, outcomes: Sequence[bool], topic: str = "t") -> None:
    """Tell the guard about messages in order: True = dead-lettered, False = decoded."""
    for dead in outcomes:
        if dead:
            guard.dead_lettered(topic)
        else:
            guard.decoded()


def ratio_only(**kwargs: float) -> FloodGuard:
    """A guard whose consecutive rule never trips in these tests."""
    return FloodGuard(10**9, **kwargs)  # type: ignore[arg-type]


# -- FloodGuard: consecutive --------------------------------------------------------


def test_the_limit_th_dead_letter_in_a_row_stops() -> None:
    guard = FloodGuard(3, max_ratio=1.0)
    feed(guard, [True, True])
    with pytest.raises(DeadLetterFlood, match=r"3 undecodable messages in a row on tidings\.x"):
        guard.dead_lettered("tidings.x")


def test_a_decoded_message_breaks_the_run() -> None:
    guard = FloodGuard(3, max_ratio=1.0)
    feed(guard, [True, True, False, True, True, False] * 50)
    assert guard.in_a_row == 0


def test_a_limit_of_one_stops_at_the_first_dead_letter() -> None:
    with pytest.raises(DeadLetterFlood):
        FloodGuard(1).dead_lettered("t")


def test_the_flood_is_a_stop_and_alert_that_says_what_to_do() -> None:
    guard = FloodGuard(1)
    with pytest.raises(StopAndAlert) as caught:
        guard.dead_lettered("t")
    assert "tidings dlq list" in str(caught.value)
    assert "tidings dlq replay" in str(caught.value)


# -- FloodGuard: ratio --------------------------------------------------------------


def test_a_share_above_the_ratio_stops_even_with_no_run() -> None:
    # Bad, good, bad, good ...: never two in a row, but 60 % of the traffic is bad.
    guard = ratio_only(max_ratio=0.5, window=20, min_messages=10)
    with pytest.raises(DeadLetterFlood) as caught:
        feed(guard, [True, True, False] * 20, topic="tidings.mail.changes")
    message = str(caught.value)
    assert "of the last" in message and "undecodable" in message
    assert "tidings.mail.changes" in message and "dlq_max_ratio 50%" in message
    assert guard.dead_in_window > 0.5 * guard.seen_in_window


def test_exactly_the_ratio_passes_and_one_more_stops() -> None:
    guard = ratio_only(max_ratio=0.5, window=10, min_messages=10)
    feed(guard, [False] * 5 + [True] * 5)  # 5 of 10: not more than half
    assert guard.ratio == 0.5
    with pytest.raises(DeadLetterFlood):
        guard.dead_lettered("t")  # the window now holds 4 good, 6 bad


def test_no_ratio_stop_below_the_minimum_sample() -> None:
    guard = ratio_only(max_ratio=0.5, window=200, min_messages=50)
    feed(guard, [True] * 49)  # 100 % bad, but only 49 seen
    assert guard.ratio == 1.0
    with pytest.raises(DeadLetterFlood):
        guard.dead_lettered("t")  # the 50th


def test_the_window_slides_so_old_dead_letters_are_forgotten() -> None:
    guard = ratio_only(max_ratio=0.5, window=10, min_messages=5)
    feed(guard, [False] * 6 + [True] * 4)  # 40 %
    feed(guard, [False] * 10)  # the four bad ones slide out
    assert (guard.dead_in_window, guard.seen_in_window, guard.ratio) == (0, 10, 0.0)
    feed(guard, [True] * 5)  # 5 of the last 10: still fine
    assert guard.dead_in_window == 5
    with pytest.raises(DeadLetterFlood):
        guard.dead_lettered("t")


def test_a_decoded_message_never_raises_however_bad_the_window() -> None:
    guard = ratio_only(max_ratio=0.0, window=4, min_messages=4)
    feed(guard, [False, False, False])
    with pytest.raises(DeadLetterFlood):
        guard.dead_lettered("t")
    guard.decoded()  # the window is still 25 % bad, but a good message stops nothing
    assert guard.dead_in_window == 1


def test_a_ratio_of_one_turns_the_ratio_rule_off() -> None:
    guard = FloodGuard(100, max_ratio=1.0, window=10, min_messages=1)
    feed(guard, [True] * 99)
    assert guard.ratio == 1.0


def test_a_ratio_of_zero_stops_at_the_first_dead_letter_after_the_minimum() -> None:
    guard = ratio_only(max_ratio=0.0, window=100, min_messages=10)
    feed(guard, [False] * 9)
    with pytest.raises(DeadLetterFlood):
        guard.dead_lettered("t")


def test_the_minimum_sample_is_capped_by_the_window() -> None:
    guard = ratio_only(max_ratio=0.5, window=4, min_messages=1000)
    assert guard.min_messages == 4
    feed(guard, [True, True])
    with pytest.raises(DeadLetterFlood):
        feed(guard, [False, True])  # 3 of 4


def test_the_consecutive_rule_speaks_first_when_both_trip() -> None:
    guard = FloodGuard(5, max_ratio=0.5, window=10, min_messages=5)
    with pytest.raises(DeadLetterFlood, match="in a row"):
        feed(guard, [True] * 5)


@pytest.mark.parametrize(
    ("limit", "ratio", "window", "minimum"),
    [(0, 0.5, 10, 5), (1, -0.1, 10, 5), (1, 1.5, 10, 5), (1, 0.5, 0, 5), (1, 0.5, 10, 0)],
)
def test_nonsense_settings_are_refused(limit: int, ratio: float, window: int, minimum: int) -> None:
    with pytest.raises(ValueError, match="dlq_"):
        FloodGuard(limit, max_ratio=ratio, window=window, min_messages=minimum)


def test_the_defaults_are_the_config_defaults() -> None:
    guard = FloodGuard()
    for section in (ProcessingConfig(), SinkConfig()):
        from_config = FloodGuard.from_settings(section)
        assert (guard.limit, guard.max_ratio, guard.window, guard.min_messages) == (
            from_config.limit,
            from_config.max_ratio,
            from_config.window,
            from_config.min_messages,
        )
    assert (guard.limit, guard.max_ratio, guard.window, guard.min_messages) == (
        dlq.DEFAULT_MAX_CONSECUTIVE,
        dlq.DEFAULT_MAX_RATIO,
        dlq.DEFAULT_RATIO_WINDOW,
        dlq.DEFAULT_RATIO_MIN_MESSAGES,
    )


def test_from_settings_takes_every_field() -> None:
    section = SinkConfig(
        dlq_max_consecutive=7, dlq_max_ratio=0.25, dlq_ratio_window=40, dlq_ratio_min_messages=8
    )
    guard = FloodGuard.from_settings(section)
    assert (guard.limit, guard.max_ratio, guard.window, guard.min_messages) == (7, 0.25, 40, 8)


@settings(max_examples=300, deadline=None)
@given(
    outcomes=st.lists(st.booleans(), max_size=300),
    limit=st.integers(1, 20),
    ratio=st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.9, 1.0]),
    window=st.integers(1, 60),
    minimum=st.integers(1, 80),
)
def test_the_guard_agrees_with_a_naive_model(
    outcomes: list[bool], limit: int, ratio: float, window: int, minimum: int
) -> None:
    """Stops exactly where recounting the whole history says it should, never earlier."""
    guard = FloodGuard(limit, max_ratio=ratio, window=window, min_messages=minimum)
    history: list[bool] = []
    for dead in outcomes:
        history.append(dead)
        run = [*history[::-1], False].index(False)
        recent = history[-window:]
        expected = dead and (
            run >= limit
            or (len(recent) >= min(minimum, window) and sum(recent) > ratio * len(recent))
        )
        if expected:
            with pytest.raises(DeadLetterFlood):
                feed(guard, [dead])
            return
        feed(guard, [dead])
        assert guard.dead_in_window == sum(recent)
        assert guard.seen_in_window == len(recent)


# -- config ---------------------------------------------------------------------------


def test_flood_settings_load_from_the_environment() -> None:
    config = load_config(
        None,
        {
            "TIDINGS_SINKS__DLQ_MAX_RATIO": "0.2",
            "TIDINGS_SINKS__DLQ_RATIO_WINDOW": "500",
            "TIDINGS_PROCESSORS__DLQ_RATIO_MIN_MESSAGES": "20",
        },
    )
    assert config.sinks.dlq_max_ratio == 0.2
    assert config.sinks.dlq_ratio_window == 500
    assert config.processors.dlq_ratio_min_messages == 20
    assert config.processors.dlq_max_ratio == 0.5


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TIDINGS_SINKS__DLQ_MAX_RATIO", "1.5"),
        ("TIDINGS_PROCESSORS__DLQ_MAX_RATIO", "-0.1"),
        ("TIDINGS_SINKS__DLQ_RATIO_WINDOW", "0"),
        ("TIDINGS_PROCESSORS__DLQ_RATIO_MIN_MESSAGES", "0"),
    ],
)
def test_flood_settings_out_of_range_are_a_config_error(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match="dlq_"):
        load_config(None, {name: value})


# -- letters and their headers --------------------------------------------------------


def letter(
    value: bytes | None,
    *,
    topic: str = "tidings.crm.records",
    key: bytes | None = b"c-1",
    attempts: int = 0,
) -> DeadLetter:
    headers = dlq.dead_letter_headers(
        topic=topic,
        partition=2,
        offset=41,
        error="first error",
        consumer="tidings-processors/parse",
        failed_at=FAILED_AT,
    )
    if attempts:
        headers.append((dlq.HEADER_REPLAY_ATTEMPTS, str(attempts).encode()))
    return DeadLetter.from_headers(headers, key, value, dlq_partition=1, dlq_offset=7)


GOOD_RECORD = codec(CRM_RECORDS).encode(
    CrmRecord(record_id="c-1", record_type="contact", name="Dana", email_addresses=["d@x.ex"])
)


def test_a_letter_says_where_it_sits_and_where_it_came_from() -> None:
    found = letter(b"x")
    assert found.where == "dlq[1]@7"
    assert found.origin == "tidings.crm.records[2]@41"
    assert found.replay_attempts == 0


def test_reinsert_headers_keep_the_origin_and_count_one_more_attempt() -> None:
    first = letter(b"garbage")
    again = DeadLetter.from_headers(
        first.reinsert_headers("still bad"), first.key, first.value, 3, 99
    )
    assert (again.topic, again.partition, again.offset) == ("tidings.crm.records", 2, 41)
    assert (again.consumer, again.failed_at) == (first.consumer, FAILED_AT.isoformat())
    assert (again.error, again.replay_attempts) == ("still bad", 1)
    third = DeadLetter.from_headers(again.reinsert_headers("no"), None, None, 0, 0)
    assert third.replay_attempts == 2


def test_reinsert_error_header_is_bounded() -> None:
    headers = dict(letter(b"x").reinsert_headers("e" * 10_000))
    assert len(headers[dlq.HEADER_ERROR]) == 4096


def test_replayed_headers_name_the_dead_letter_only() -> None:
    assert letter(b"x").replayed_headers() == [(dlq.HEADER_REPLAYED_FROM, b"1@7")]


def test_headers_that_are_not_numbers_read_as_missing() -> None:
    headers = [
        (dlq.HEADER_PARTITION, b"two"),
        (dlq.HEADER_OFFSET, b""),
        (dlq.HEADER_REPLAY_ATTEMPTS, b"x"),
    ]
    found = DeadLetter.from_headers(headers, None, None, 0, 0)
    assert (found.partition, found.offset, found.replay_attempts) == (-1, -1, 0)


# -- what replay decides ----------------------------------------------------------------


def test_a_letter_that_decodes_now_has_no_problem() -> None:
    assert letter_problem(letter(GOOD_RECORD), PREFIX) is None


@pytest.mark.parametrize(
    ("found", "expected"),
    [
        (letter(b"garbage"), "malformed"),
        (letter(b'{"schema_version": 1}'), "missing required field"),
        (letter(b"{}", topic=""), "no original-topic header"),
        (letter(b"{}", topic="other.crm.records"), "not a tidings topic"),
        (letter(b"{}", topic="tidings.dlq"), "not a tidings topic"),
        (letter(None, topic=MAIL_CHANGES.name(PREFIX)), "not compacted"),
        (letter(b"", topic=MAIL_CHANGES.name(PREFIX)), "tombstone"),
    ],
)
def test_why_a_letter_does_not_decode(found: DeadLetter, expected: str) -> None:
    problem = letter_problem(found, PREFIX)
    assert problem is not None and expected in problem.lower()


def test_a_tombstone_decodes_on_a_compacted_topic() -> None:
    assert letter_problem(letter(None), PREFIX) is None
    assert letter_problem(letter(b""), PREFIX) is None


def test_the_prefix_is_the_configured_one() -> None:
    found = letter(GOOD_RECORD, topic="acme.crm.records")
    assert letter_problem(found, "acme.") is None
    assert letter_problem(found, PREFIX) is not None


@pytest.mark.parametrize("policy", list(Policy))
def test_a_good_letter_is_replayed_whatever_the_policy(policy: Policy) -> None:
    assert plan(letter(GOOD_RECORD), policy, PREFIX) == (Action.REPLAY, None)


@pytest.mark.parametrize(
    ("policy", "action"),
    [
        (Policy.STOP_ON_ERROR, Action.STOP),
        (Policy.REINSERT, Action.REINSERT),
        (Policy.DROP, Action.DROP),
    ],
)
def test_the_policy_decides_a_bad_letter(policy: Policy, action: Action) -> None:
    decided, problem = plan(letter(b"garbage"), policy, PREFIX)
    assert decided is action
    assert problem and "malformed" in problem.lower()


def test_letters_of_other_topics_are_kept_before_anything_is_decoded() -> None:
    bad = letter(b"garbage")
    assert plan(bad, Policy.STOP_ON_ERROR, PREFIX, "mail.changes") == (Action.KEEP, None)
    assert plan(bad, Policy.DROP, PREFIX, "crm.records")[0] is Action.DROP
    assert plan(bad, Policy.DROP, PREFIX, "tidings.crm.records")[0] is Action.DROP


def test_topic_filter_accepts_the_name_with_or_without_prefix() -> None:
    found = letter(b"x")
    assert matches_topic(found, None, PREFIX)
    assert matches_topic(found, "crm.records", PREFIX)
    assert matches_topic(found, "tidings.crm.records", PREFIX)
    assert not matches_topic(found, "records", PREFIX)
    assert not matches_topic(found, "tidings.mail.changes", PREFIX)


def test_the_report_counts_by_action_and_topic() -> None:
    report = ReplayReport(pending=5)
    report.add(letter(b"x"), Action.REPLAY)
    report.add(letter(b"x"), Action.REPLAY)
    report.add(letter(b"x", topic="tidings.mail.changes"), Action.REPLAY)
    report.add(letter(b"x"), Action.DROP)
    report.add(letter(b"x"), Action.STOP)
    assert report.counts[Action.REPLAY] == 3
    assert report.by_topic[Action.REPLAY] == {"tidings.crm.records": 2, "tidings.mail.changes": 1}
    assert report.handled == 4  # the stop is not handled


def test_dead_letter_is_still_a_plain_struct() -> None:
    found = letter(b"x", attempts=3)
    assert found.replay_attempts == 3
    assert msgspec.json.decode(msgspec.json.encode(found), type=DeadLetter) == found
