"""processors.parse: raw MIME in, a ParsedEmail or a ParseFailure out."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processors.parse import ParseFailure, html_to_text, normalize_address, parse_item
from schemas.mail import AutoReplyKind, ChangeKind, EmailAddress, MailItemChanged, ParsedEmail
from schemas.mailbox import FolderRole

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def event(raw: bytes | None, **fields: object) -> MailItemChanged:
    values: dict[str, object] = {
        "event_id": "ev-1",
        "mailbox_id": "mb-alice",
        "folder": "INBOX",
        "item_id": "item-1",
        "change": ChangeKind.CREATED,
        "observed_at": T0,
        "raw": raw,
    }
    values.update(fields)
    return MailItemChanged(**values)  # type: ignore[arg-type]


def parse(raw: bytes, max_chars: int = 10_000, role: FolderRole = FolderRole.INBOX) -> ParsedEmail:
    result = parse_item(event(raw), role, max_chars)
    assert isinstance(result, ParsedEmail), result
    return result


def fail(raw: bytes | None, **fields: object) -> ParseFailure:
    result = parse_item(event(raw, **fields), FolderRole.INBOX, 10_000)
    assert isinstance(result, ParseFailure), result
    return result


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


PLAIN = crlf(
    """From: Dana Scully <Dana@Contoso.Example>
To: Alice <alice@nw.example>, bob@NW.example
Cc: support@nw.example
Subject: Quote for 40 units
Date: Mon, 2 Mar 2026 10:00:00 +0100
Message-ID: <Quote-1@Contoso.EXAMPLE>
Thread-Index: AdSomething==

Hello Alice,

please send the quote.
"""
)


# -- plain text and headers -----------------------------------------------------


def test_plain_text_message_is_parsed_with_normalized_headers() -> None:
    email = parse(PLAIN, role=FolderRole.SENT)
    assert email.event_id == "ev-1"
    assert email.mailbox_id == "mb-alice"
    assert email.folder == "INBOX"
    assert email.folder_role == FolderRole.SENT
    assert email.item_id == "item-1"
    assert email.observed_at == T0
    assert email.subject == "Quote for 40 units"
    assert email.sender == EmailAddress("dana@contoso.example", "Dana Scully")
    assert email.to == [
        EmailAddress("alice@nw.example", "Alice"),
        EmailAddress("bob@nw.example", ""),
    ]
    assert email.cc == [EmailAddress("support@nw.example", "")]
    assert email.bcc == []
    assert email.sent_at == datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    assert email.message_id == "Quote-1@contoso.example"
    assert email.message_id_synthetic is False
    assert email.thread_index == "AdSomething=="
    assert email.body_text.replace("\r\n", "\n") == "Hello Alice,\n\nplease send the quote."
    assert email.body_truncated is False
    assert email.has_html is False
    assert email.attachments == []
    assert email.auto_reply == AutoReplyKind.NONE
    assert email.size == len(PLAIN)
    assert email.defects == []


def test_lf_only_message_parses_the_same_as_crlf() -> None:
    lf = parse(PLAIN.replace(b"\r\n", b"\n"))
    both = parse(PLAIN)
    assert lf.subject == both.subject
    assert lf.sender == both.sender
    assert lf.message_id == both.message_id
    assert lf.body_text.replace("\r\n", "\n") == both.body_text.replace("\r\n", "\n")


def test_recipients_are_deduplicated_case_insensitively() -> None:
    email = parse(
        crlf("From: a@x.example\nTo: A@B.example, a@b.example, Other <o@b.example>\n\nhi\n")
    )
    assert [a.address for a in email.to] == ["a@b.example", "o@b.example"]


def test_invalid_sender_address_is_a_defect_not_a_failure() -> None:
    email = parse(crlf("From: not an address\nSubject: x\n\nbody\n"))
    assert email.sender is None
    assert "InvalidFromAddress" in email.defects


def test_date_without_zone_is_read_as_utc_and_bad_date_is_a_defect() -> None:
    naive = parse(crlf("From: a@x.example\nDate: Mon, 2 Mar 2026 10:00:00\n\nb\n"))
    assert naive.sent_at == datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    bad = parse(crlf("From: a@x.example\nDate: yesterday-ish\n\nb\n"))
    assert bad.sent_at is None
    assert "InvalidDateHeader" in bad.defects


def test_rfc2047_subject_and_display_names_are_decoded() -> None:
    raw = crlf(
        "From: =?utf-8?q?J=C3=B6rg_M=C3=BCller?= <joerg@x.example>\n"
        "To: =?iso-8859-1?q?Ren=E9?= <rene@y.example>\n"
        "Subject: =?utf-8?b?SMOpbGxv?= world\n"
        "\n"
        "body\n"
    )
    email = parse(raw)
    assert email.subject == "Héllo world"
    assert email.sender == EmailAddress("joerg@x.example", "Jörg Müller")
    assert email.to == [EmailAddress("rene@y.example", "René")]


def test_encoded_display_name_may_hide_a_comma() -> None:
    raw = crlf("From: a@x.example\nTo: =?utf-8?q?Doe=2C_John?= <j@x.example>, k@x.example\n\nb\n")
    assert parse(raw).to == [
        EmailAddress("j@x.example", "Doe, John"),
        EmailAddress("k@x.example", ""),
    ]


def test_raw_utf8_headers_are_accepted() -> None:
    email = parse("From: Jörg <j@x.example>\nSubject: Grüße\n\nbody\n".encode())
    assert email.subject == "Grüße"
    assert email.sender == EmailAddress("j@x.example", "Jörg")


def test_folded_subject_is_unfolded_to_single_spaces() -> None:
    email = parse(crlf("From: a@x.example\nSubject: a long\n   folded   subject\n\nb\n"))
    assert email.subject == "a long folded subject"


# -- bodies ---------------------------------------------------------------------


ALTERNATIVE = crlf(
    """From: a@x.example
Subject: alt
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="ALT"

--ALT
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable

Caf=C3=A9 plain text
--ALT
Content-Type: text/html; charset=utf-8

<p>Caf&eacute; <b>html</b></p>
--ALT--
"""
)


def test_multipart_alternative_prefers_the_plain_part() -> None:
    email = parse(ALTERNATIVE)
    assert email.body_text == "Café plain text"
    assert email.has_html is True
    assert email.attachments == []


def test_html_only_body_is_converted_to_text() -> None:
    html = "<html><head><title>T</title></head><body><div>Hi <b>thére</b></div><p>x</p></body>"
    raw = crlf(
        "From: a@x.example\nSubject: h\n"
        "Content-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: base64\n\n"
    ) + base64.encodebytes(html.encode("utf-8"))
    email = parse(raw)
    assert email.body_text == "Hi thére\nx"
    assert email.has_html is True


def test_quoted_printable_body_is_decoded() -> None:
    raw = crlf(
        "From: a@x.example\nSubject: qp\n"
        "Content-Type: text/plain; charset=iso-8859-1\n"
        "Content-Transfer-Encoding: quoted-printable\n\n"
        "Gr=FC=DFe aus K=F6ln, a very long line that is soft=\n"
        " wrapped\n"
    )
    assert parse(raw).body_text == "Grüße aus Köln, a very long line that is soft wrapped"


def test_base64_body_is_decoded() -> None:
    raw = crlf(
        "From: a@x.example\nSubject: b64\n"
        "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\n"
    ) + base64.encodebytes("Zürich ✓".encode())
    assert parse(raw).body_text == "Zürich ✓"


def test_unknown_charset_does_not_crash_and_is_recorded() -> None:
    raw = (
        b"From: a@x.example\nSubject: x\n"
        b"Content-Type: text/plain; charset=x-unknown-zz\n\nbody \xe9 ok\n"
    )
    email = parse(raw)
    assert "UnknownCharset" in email.defects
    assert email.body_text.startswith("body ")
    assert email.body_text.endswith(" ok")


def test_unknown_charset_in_an_encoded_header_does_not_crash() -> None:
    raw = crlf("From: =?x-bogus?q?N=E4me?= <n@x.example>\nSubject: =?x-unknown?q?abc?= tail\n\nb\n")
    email = parse(raw)
    assert email.sender is not None and email.sender.address == "n@x.example"
    assert email.subject.endswith("tail")


def test_html_to_text_drops_tags_scripts_and_styles_and_breaks_blocks() -> None:
    html = (
        "<html><head><title>Title</title><style>p { color: red }</style></head><body>"
        "<p>Hello&nbsp;<b>World</b> &amp; co</p><script>alert(1)</script>"
        "<div>Line   two</div><ul><li>one</li><li>two</li></ul>end<br>after</body></html>"
    )
    assert html_to_text(html) == "Hello World & co\nLine two\none\ntwo\nend\nafter"


def test_html_to_text_of_plain_text_is_unchanged() -> None:
    assert html_to_text("just words") == "just words"
    assert html_to_text("") == ""


def test_body_longer_than_the_limit_is_truncated_and_flagged() -> None:
    raw = crlf("From: a@x.example\nSubject: t\n\n") + b"x" * 50
    email = parse(raw, max_chars=10)
    assert email.body_text == "x" * 10
    assert email.body_truncated is True


def test_body_exactly_at_the_limit_is_not_truncated() -> None:
    raw = crlf("From: a@x.example\nSubject: t\n\n") + b"x" * 10
    email = parse(raw, max_chars=10)
    assert email.body_text == "x" * 10
    assert email.body_truncated is False


# -- attachments ----------------------------------------------------------------


def test_attachment_metadata_is_listed() -> None:
    pdf = b"%PDF-1.4 " + bytes(range(256)) * 4
    raw = (
        crlf(
            "From: a@x.example\nSubject: files\nMIME-Version: 1.0\n"
            'Content-Type: multipart/mixed; boundary="MIX"\n\n'
            "--MIX\nContent-Type: text/plain\n\nsee attached\n"
            "--MIX\nContent-Type: application/pdf\n"
            'Content-Disposition: attachment; filename="quote.pdf"\n'
            "Content-Transfer-Encoding: base64\n\n"
        )
        + base64.encodebytes(pdf)
        + crlf(
            "--MIX\nContent-Type: text/csv\n"
            "Content-Disposition: attachment; filename*=utf-8''Pr%C3%A9ise.csv\n\n"
            "a,b\n"
            "--MIX--\n"
        )
    )
    email = parse(raw)
    assert email.body_text == "see attached"
    assert [(a.filename, a.content_type) for a in email.attachments] == [
        ("quote.pdf", "application/pdf"),
        ("Préise.csv", "text/csv"),
    ]
    assert email.attachments[0].size == len(pdf)
    assert email.attachments[1].size in (len(b"a,b\r\n"), len(b"a,b\n"), len(b"a,b"))


FORWARDED = crlf(
    """From: a@x.example
Subject: Fwd: inner
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="OUT"

--OUT
Content-Type: text/plain

see the forwarded message
--OUT
Content-Type: message/rfc822
Content-Disposition: attachment; filename="forwarded.eml"

From: z@y.example
Subject: inner
Message-ID: <inner@y.example>

"""
    + "inner body line\n" * 200
    + "--OUT--\n"
)


def test_message_rfc822_attachment_is_listed_and_not_used_as_body() -> None:
    email = parse(FORWARDED)
    assert email.body_text == "see the forwarded message"
    assert email.subject == "Fwd: inner"
    assert email.message_id != "inner@y.example"  # the outer message has no Message-ID
    assert email.message_id_synthetic is True
    assert [(a.filename, a.content_type) for a in email.attachments] == [
        ("forwarded.eml", "message/rfc822")
    ]


def test_message_rfc822_attachment_size_is_the_size_of_the_embedded_message() -> None:
    email = parse(FORWARDED)
    # The embedded message carries 200 lines of 16 characters: at least 3200 bytes.
    assert email.attachments[0].size >= 200 * len("inner body line\n")


# -- threading headers ----------------------------------------------------------


def test_references_and_in_reply_to_are_extracted_and_normalized() -> None:
    raw = crlf(
        "From: a@x.example\n"
        "Message-ID: <Own@X.EXAMPLE>\n"
        "In-Reply-To: <P1@Ex.COM> (comment)\n"
        "References: <r0@EX.com> <r1@ex.com>\n"
        "  <r0@ex.com>\n"
        "\t<P1@ex.com>\n"
        "Subject: re\n\nb\n"
    )
    email = parse(raw)
    assert email.in_reply_to == "P1@ex.com"
    assert email.references == ["r0@ex.com", "r1@ex.com", "P1@ex.com"]
    assert email.message_id == "Own@x.example"


def test_references_without_angle_brackets_keep_only_id_like_tokens() -> None:
    email = parse(crlf("From: a@x.example\nReferences: a@X.com junk b@x.com\n\nb\n"))
    assert email.references == ["a@x.com", "b@x.com"]


def test_thread_key_is_first_reference() -> None:
    raw = crlf(
        "From: a@x.example\nMessage-ID: <m@x.example>\n"
        "In-Reply-To: <p@x.example>\nReferences: <root@x.example> <p@x.example>\n\nb\n"
    )
    assert parse(raw).thread_key == "root@x.example"


def test_thread_key_is_in_reply_to_without_references() -> None:
    raw = crlf("From: a@x.example\nMessage-ID: <m@x.example>\nIn-Reply-To: <P@X.example>\n\nb\n")
    assert parse(raw).thread_key == "P@x.example"


def test_thread_key_is_own_message_id_without_threading_headers() -> None:
    raw = crlf("From: a@x.example\nMessage-ID: <Own@X.example>\n\nb\n")
    email = parse(raw)
    assert email.in_reply_to is None
    assert email.references == []
    assert email.thread_key == "Own@x.example"


# -- synthetic Message-ID -------------------------------------------------------


NO_ID = crlf("From: a@x.example\nDate: Mon, 2 Mar 2026 10:00:00 +0000\nSubject: s\n\nbody\n")


def test_missing_message_id_gets_a_synthetic_one_that_is_its_thread_key() -> None:
    email = parse(NO_ID)
    assert email.message_id_synthetic is True
    assert email.message_id.startswith("synthetic-")
    assert email.message_id.endswith("@tidings.invalid")
    assert email.thread_key == email.message_id


def test_synthetic_message_id_is_stable_across_copies_of_the_same_content() -> None:
    first = parse_item(event(NO_ID), FolderRole.INBOX, 10_000)
    copy = parse_item(
        event(NO_ID, event_id="ev-other", mailbox_id="mb-bob", folder="Archive", item_id="77"),
        FolderRole.OTHER,
        10_000,
    )
    assert isinstance(first, ParsedEmail) and isinstance(copy, ParsedEmail)
    assert first.message_id == copy.message_id


@pytest.mark.parametrize(
    "changed",
    [
        NO_ID.replace(b"a@x.example", b"b@x.example"),
        NO_ID.replace(b"10:00:00", b"10:00:01"),
        NO_ID.replace(b"Subject: s", b"Subject: t"),
        NO_ID.replace(b"body", b"bodY"),
    ],
)
def test_synthetic_message_id_differs_when_content_differs(changed: bytes) -> None:
    assert parse(changed).message_id != parse(NO_ID).message_id


def test_synthetic_message_id_does_not_depend_on_line_endings() -> None:
    lf = parse(b"From: a@x.example\nSubject: s\n\nline1\nline2\n")
    crlf_copy = parse(b"From: a@x.example\r\nSubject: s\r\n\r\nline1\r\nline2\r\n")
    assert crlf_copy.message_id == lf.message_id
    assert crlf_copy.body_text == lf.body_text == "line1\nline2"


def test_empty_message_id_header_counts_as_missing() -> None:
    email = parse(crlf("From: a@x.example\nMessage-ID: <>\nSubject: s\n\nb\n"))
    assert email.message_id_synthetic is True


# -- auto-replies and bounces ---------------------------------------------------


@pytest.mark.parametrize(
    ("header", "kind"),
    [
        ("Auto-Submitted: auto-replied", AutoReplyKind.AUTO_REPLY),
        ("Auto-Submitted: auto-generated", AutoReplyKind.AUTO_REPLY),
        ("Auto-Submitted: no", AutoReplyKind.NONE),
        ("Auto-Submitted: No", AutoReplyKind.NONE),
        ("X-Autoreply: yes", AutoReplyKind.AUTO_REPLY),
        ("X-Autorespond: Out of office", AutoReplyKind.AUTO_REPLY),
        ("Precedence: auto_reply", AutoReplyKind.AUTO_REPLY),
        ("Precedence: Auto_Reply", AutoReplyKind.AUTO_REPLY),
        ("Precedence: bulk", AutoReplyKind.NONE),
        ("Precedence: list", AutoReplyKind.NONE),
        ("X-Mailer: ordinary", AutoReplyKind.NONE),
    ],
)
def test_auto_reply_headers(header: str, kind: AutoReplyKind) -> None:
    raw = crlf(f"From: a@x.example\nSubject: Out of office\n{header}\n\nbody\n")
    assert parse(raw).auto_reply == kind


def report(report_type: str) -> bytes:
    return crlf(
        "From: MAILER-DAEMON@x.example\nSubject: Undelivered Mail\nMIME-Version: 1.0\n"
        f'Content-Type: multipart/report; report-type={report_type}; boundary="R"\n\n'
        "--R\nContent-Type: text/plain\n\nDelivery failed.\n"
        "--R\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; x.example\n\n"
        "Final-Recipient: rfc822; nobody@y.example\nStatus: 5.1.1\nAction: failed\n"
        "--R--\n"
    )


def test_delivery_status_report_is_a_bounce() -> None:
    email = parse(report("delivery-status"))
    assert email.auto_reply == AutoReplyKind.BOUNCE
    assert email.body_text == "Delivery failed."


def test_other_multipart_reports_are_not_bounces() -> None:
    assert parse(report("disposition-notification")).auto_reply == AutoReplyKind.NONE


# -- failures -------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"", b"   \r\n\r\n  ", b"\n"])
def test_empty_input_is_malformed(raw: bytes) -> None:
    failure = fail(raw)
    assert failure.code == "Malformed"
    assert "empty" in failure.message


@pytest.mark.parametrize(
    "raw",
    [
        b"\x00\x01\x02\xff\xfe binary junk",
        b"hello world\n\nthis is not a header block",
        b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n",
        b": no field name\n\nbody",
        b"From \n",  # an mbox separator line and nothing else
        b"From someone@x.example Mon Mar  2 10:00:00 2026\nnot a header\n",
    ],
)
def test_input_without_a_header_block_is_malformed(raw: bytes) -> None:
    failure = fail(raw)
    assert failure.code == "Malformed"
    assert failure.message


def test_multipart_whose_boundary_never_appears_is_malformed() -> None:
    raw = crlf(
        "From: a@x.example\nSubject: broken\nMIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="XYZ"\n\n'
        "there is no boundary line in this body\n"
    )
    failure = fail(raw)
    assert failure.code == "Malformed"
    assert "XYZ" in failure.message


def test_multipart_without_boundary_parameter_is_malformed() -> None:
    raw = crlf(
        "From: a@x.example\nSubject: broken\nContent-Type: multipart/mixed\n\n"
        "--b\nContent-Type: text/plain\n\nhi\n--b--\n"
    )
    assert fail(raw).code == "Malformed"


def test_multipart_without_closing_boundary_is_a_defect_not_a_failure() -> None:
    raw = crlf(
        "From: a@x.example\nSubject: x\nContent-Type: multipart/mixed; boundary=b\n\n"
        "--b\nContent-Type: text/plain\n\nhi\n"
    )
    email = parse(raw)
    assert email.body_text == "hi"
    assert "CloseBoundaryNotFoundDefect" in email.defects


def test_mbox_from_line_is_skipped() -> None:
    raw = b"From dana@contoso.example Mon Mar  2 10:00:00 2026\n" + PLAIN.replace(b"\r\n", b"\n")
    email = parse(raw)
    assert email.subject == "Quote for 40 units"
    assert email.sender == EmailAddress("dana@contoso.example", "Dana Scully")
    assert email.message_id == "Quote-1@contoso.example"


def test_leading_blank_line_is_either_rejected_or_parsed_with_its_headers() -> None:
    result = parse_item(
        event(b"\r\nFrom: a@x.example\r\nSubject: x\r\n\r\nbody"), FolderRole.INBOX, 10_000
    )
    if isinstance(result, ParseFailure):
        assert result.code == "Malformed"
    else:
        assert result.subject == "x"
        assert result.sender == EmailAddress("a@x.example")


def test_unreadable_code_on_the_event_becomes_the_failure() -> None:
    failure = fail(PLAIN, unreadable_code="TooLarge", unreadable_reason="42 MB over the limit")
    assert failure == ParseFailure("TooLarge", "42 MB over the limit")


def test_unreadable_code_without_reason_still_fails_with_that_code() -> None:
    failure = fail(None, unreadable_code="AccessDenied")
    assert failure.code == "AccessDenied"
    assert failure.message


def test_event_without_content_is_blob_unavailable() -> None:
    assert fail(None).code == "BlobUnavailable"


@given(st.binary(max_size=300))
def test_parse_never_raises_on_arbitrary_bytes(raw: bytes) -> None:
    result = parse_item(event(raw), FolderRole.INBOX, 1000)
    assert isinstance(result, ParsedEmail | ParseFailure)


@given(st.binary(max_size=200))
def test_parse_never_raises_on_arbitrary_bodies_after_a_valid_header(body: bytes) -> None:
    result = parse_item(event(b"From: a@x.example\nSubject: s\n\n" + body), FolderRole.INBOX, 50)
    assert isinstance(result, ParsedEmail)
    assert len(result.body_text) <= 50


def test_parsing_is_deterministic() -> None:
    assert parse(ALTERNATIVE) == parse(ALTERNATIVE)
    assert parse(NO_ID) == parse(NO_ID)


# -- normalize_address ----------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Alice@NW.Example", "alice@nw.example"),
        ("  <bob@x.example>  ", "bob@x.example"),
        ("no-at-sign", None),
        ("@x.example", None),
        ("user@", None),
        ("two words@x.example", None),
        ("", None),
    ],
)
def test_normalize_address(raw: str, expected: str | None) -> None:
    assert normalize_address(raw) == expected
