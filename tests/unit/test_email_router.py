"""Email Router migration: parsing Microsoft.Crm.Tools.EmailAgent.xml, the merge rules,
the warnings, the plan against what exists, and that no password ever leaves the file."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner

from pipeline.email_router import (
    AccessCredentials,
    Direction,
    EmailRouterError,
    ItemStatus,
    MigrationPlan,
    RouterConfig,
    apply_plan,
    parse_router_config,
    plan_migration,
    read_router_file,
)
from pipeline.migrate import migrate, print_plan
from schemas.crm import CrmRecord
from schemas.mailbox import (
    MailboxConfig,
    Protocol,
    ServerProfile,
    TransportSecurity,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "email-router"
NOW = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
PASSWORD_MARKERS = ("AQAAANCMnd8BFdERjHoAwE", "c2VjcmV0")  # the ciphertext in the samples


def plan(
    router: RouterConfig,
    *,
    profiles: dict[str, ServerProfile] | None = None,
    mailboxes: dict[str, MailboxConfig] | None = None,
    directory: dict[str, CrmRecord] | None = None,
    approve: bool = False,
    enable: bool = False,
) -> MigrationPlan:
    return plan_migration(
        router,
        existing_profiles=profiles or {},
        existing_mailboxes=mailboxes or {},
        directory=directory or {},
        approve=approve,
        enable=enable,
        now=NOW,
    )


def fabrikam_directory() -> dict[str, CrmRecord]:
    records = [
        msgspec.json.decode(line)
        for line in (EXAMPLES / "pop3-smtp-crm.jsonl").read_text().splitlines()
    ]
    return {
        r["id"]: CrmRecord(
            record_id=r["id"], record_type=r["type"], name=r["name"], email_addresses=r["emails"]
        )
        for r in records
    }


def mailbox_ids(result: MigrationPlan) -> list[str]:
    return [m.config.mailbox_id for m in result.mailboxes]


def by_id(result: MigrationPlan) -> dict[str, MailboxConfig]:
    return {m.config.mailbox_id: m.config for m in result.mailboxes}


def messages(result: MigrationPlan) -> list[str]:
    return [f"{w.subject}: {w.message}" for w in result.warnings]


# -- parsing ----------------------------------------------------------------------------


def test_parses_the_exchange_sample() -> None:
    router = read_router_file(EXAMPLES / "exchange-onprem.xml")
    assert router.system["MaxThreads"] == "50"
    incoming, outgoing, forward = router.providers
    assert incoming.protocol == Protocol.EWS and incoming.direction == Direction.INCOMING
    assert outgoing.protocol == Protocol.EWS and outgoing.direction == Direction.OUTGOING
    assert incoming.host == "mail.contoso.example" and incoming.url_path == "/EWS/Exchange.asmx"
    assert incoming.use_ssl is True and incoming.access == AccessCredentials.OTHER_SPECIFIED
    assert [(r.kind, r.record_id, r.email) for r in incoming.recipients] == [
        ("user", "alice", "alice@contoso.example"),
        ("user", "bob", "bob@contoso.example"),
        ("queue", "support", "support@contoso.example"),
    ]
    assert forward.forward_mailbox and forward.email_address == "crm-forward@contoso.example"
    assert incoming.password_present


def test_parsed_structs_hold_no_password() -> None:
    for path in EXAMPLES.glob("*.xml"):
        encoded = msgspec.json.encode(read_router_file(path)).decode()
        assert not any(marker in encoded for marker in PASSWORD_MARKERS), path.name


def test_class_names_decide_protocol_and_direction() -> None:
    xml = b"""<Configuration>
      <ProviderConfiguration><ProviderClass>X.Pop3PollingMailboxProvider</ProviderClass>
        <EmailServerUrl>pop.example:1995</EmailServerUrl></ProviderConfiguration>
      <ProviderConfiguration><ProviderClass>X.SmtpPollingSendEmailProvider</ProviderClass>
        <EmailServerUrl>smtp.example</EmailServerUrl></ProviderConfiguration>
      <ProviderConfiguration><ProviderClass>X.ExchangePollingMailboxProvider</ProviderClass>
        <EmailServerUrl>https://ex.example:8443/EWS/Exchange.asmx</EmailServerUrl>
      </ProviderConfiguration>
      <ProviderConfiguration><ProviderClass>X.ImapPollingMailboxProvider</ProviderClass>
        <EmailServerUrl>imaps://imap.example</EmailServerUrl></ProviderConfiguration>
    </Configuration>"""
    pop, smtp, exchange, imap = parse_router_config(xml).providers
    assert (pop.protocol, pop.direction, pop.port) == (Protocol.POP3, Direction.INCOMING, 1995)
    assert (smtp.protocol, smtp.direction) == (Protocol.SMTP, Direction.OUTGOING)
    assert (exchange.protocol, exchange.port, exchange.use_ssl) == (Protocol.EWS, 8443, True)
    assert (imap.protocol, imap.use_ssl) == (Protocol.IMAP, True)


def test_tags_match_case_insensitively_and_ignore_namespaces() -> None:
    xml = b"""<c:configuration xmlns:c="urn:x"><c:providerconfiguration>
      <c:providerclass>X.Pop3PollingMailboxProvider</c:providerclass>
      <c:emailserverurl>pop.example</c:emailserverurl><c:userid>{ABC}</c:userid>
    </c:providerconfiguration></c:configuration>"""
    (provider,) = parse_router_config(xml).providers
    assert provider.host == "pop.example"
    assert provider.recipients[0].record_id == "abc"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"<Configuration><ProviderConfiguration>", "not well-formed XML"),
        (b"", "not well-formed XML"),
        (b"<html><body>hello</body></html>", "not an Email Router configuration"),
        (
            b'<?xml version="1.0"?><!DOCTYPE c [<!ENTITY a "aaaa">]>'
            b"<Configuration><SystemConfiguration>&a;</SystemConfiguration></Configuration>",
            "declares a DTD or entities",
        ),
        (
            b'<!DOCTYPE c SYSTEM "http://127.0.0.1:9/evil.dtd"><Configuration/>',
            "declares a DTD or entities",
        ),
    ],
)
def test_bad_files_give_one_clear_error(data: bytes, expected: str) -> None:
    with pytest.raises(EmailRouterError, match=expected) as info:
        parse_router_config(data, source="router.xml")
    assert "\n" not in str(info.value)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(EmailRouterError, match="does not exist"):
        read_router_file(tmp_path / "nope.xml")
    with pytest.raises(EmailRouterError, match="is a directory"):
        read_router_file(tmp_path)


# -- merge rules ------------------------------------------------------------------------


def test_exchange_incoming_and_outgoing_merge_into_one_ews_profile() -> None:
    result = plan(read_router_file(EXAMPLES / "exchange-onprem.xml"))
    (profile,) = result.profiles
    assert profile.name == "mail-contoso-example-ews"
    assert profile.status == ItemStatus.CREATE
    assert profile.directions == (Direction.INCOMING, Direction.OUTGOING)
    assert profile.merged_from == (
        "Contoso Exchange incoming",
        "Contoso Exchange outgoing",
        "Contoso forward mailbox",
    )
    assert profile.profile == ServerProfile(
        protocol=Protocol.EWS, host="mail.contoso.example", port=443
    )
    assert all(m.config.server_profile == profile.name for m in result.mailboxes)


def test_pop3_in_and_smtp_out_on_one_host_are_two_profiles_named_by_every_mailbox() -> None:
    result = plan(read_router_file(EXAMPLES / "pop3-smtp.xml"), directory=fabrikam_directory())
    pop3, smtp = result.profiles
    assert (pop3.name, pop3.profile.protocol, pop3.profile.effective_port()) == (
        "mail-fabrikam-example-pop3",
        Protocol.POP3,
        995,
    )
    # two router POP3 profiles (different accounts, same server) are one tidings profile
    assert pop3.merged_from == ("Fabrikam POP3 sales", "Fabrikam POP3 service desk")
    assert smtp.name == "mail-fabrikam-example-smtp"
    assert smtp.profile.security == TransportSecurity.STARTTLS
    assert smtp.profile.effective_port() == 587
    mailboxes = by_id(result)
    assert sorted(mailboxes) == [
        "mb-5d3a4c8e-1f0b-4e8e-9c1a-0a1b2c3d4e01",
        "mb-5d3a4c8e-1f0b-4e8e-9c1a-0a1b2c3d4e02",
        "mb-7e1d0c2b-3a4f-4b5c-8d6e-0f1a2b3c4d01",
    ]
    for config in mailboxes.values():
        assert config.server_profile == pop3.name and config.protocol == Protocol.POP3
        assert config.outgoing is not None
        assert config.outgoing.server_profile == smtp.name
        assert config.pop3 is not None and config.pop3.leave_on_server
    dana = mailboxes["mb-5d3a4c8e-1f0b-4e8e-9c1a-0a1b2c3d4e01"]
    assert dana.email_address == "dana@fabrikam.example"  # from crm.records
    assert dana.owner.type == "user"
    assert result.warnings == ()


def test_same_host_different_port_stays_two_profiles() -> None:
    xml = b"""<Configuration>
      <ProviderConfiguration><ProviderClass>X.Pop3PollingMailboxProvider</ProviderClass>
        <EmailServerUrl>pop.example</EmailServerUrl><EmailServerPort>995</EmailServerPort>
        <UserId EmailAddress="a@x.example">a</UserId></ProviderConfiguration>
      <ProviderConfiguration><ProviderClass>X.Pop3PollingMailboxProvider</ProviderClass>
        <EmailServerUrl>pop.example</EmailServerUrl><EmailServerPort>1995</EmailServerPort>
        <UserId EmailAddress="b@x.example">b</UserId></ProviderConfiguration>
    </Configuration>"""
    result = plan(parse_router_config(xml))
    assert [(p.name, p.profile.port) for p in result.profiles] == [
        ("pop-example-pop3", None),
        ("pop-example-pop3-2", 1995),
    ]
    assert by_id(result)["mb-b"].server_profile == "pop-example-pop3-2"


def test_an_existing_profile_for_the_same_server_is_reused_by_name() -> None:
    mine = ServerProfile(protocol=Protocol.EWS, host="mail.contoso.example", port=443)
    tuned = msgspec.structs.replace(mine, max_connections=4)
    result = plan(read_router_file(EXAMPLES / "exchange-onprem.xml"), profiles={"corp": tuned})
    (profile,) = result.profiles
    assert (profile.name, profile.status, profile.profile) == ("corp", ItemStatus.EXISTING, tuned)
    assert {m.config.server_profile for m in result.mailboxes} == {"corp"}
    assert result.profiles_to_create() == {}


# -- mailboxes, credentials, forward mailbox -------------------------------------------


def test_exchange_mailboxes_forward_mailbox_and_password_variables() -> None:
    result = plan(read_router_file(EXAMPLES / "exchange-onprem.xml"))
    mailboxes = by_id(result)
    assert sorted(mailboxes) == [
        "mb-alice",
        "mb-bob",
        "mb-carol",
        "mb-forward-contoso-forward-mailbox",
        "mb-support",
    ]
    alice = mailboxes["mb-alice"]
    assert str(alice.owner) == "user:alice" and alice.protocol == Protocol.EWS
    assert (alice.approved, alice.enabled) == (False, False)  # conservative defaults
    assert alice.credentials is not None and alice.credentials.password is not None
    assert alice.credentials.username == "svc-crmrouter@contoso.example"
    assert alice.credentials.password.env == "ROUTER_CONTOSO_EXCHANGE_INCOMING_PASSWORD"
    assert str(mailboxes["mb-support"].owner) == "queue:support"
    forward = mailboxes["mb-forward-contoso-forward-mailbox"]
    assert forward.forward_mailbox and forward.email_address == "crm-forward@contoso.example"
    carol = mailboxes["mb-carol"]  # served by the forward mailbox: attributable, never polled
    assert not carol.forward_mailbox and not carol.enabled and carol.credentials is None
    secrets = {s.env: s for s in result.secrets}
    assert secrets["ROUTER_CONTOSO_EXCHANGE_INCOMING_PASSWORD"].used_by == (
        "mb-alice",
        "mb-bob",
        "mb-support",
    )
    assert not any(env.startswith("TIDINGS_") for env in secrets)
    # Exchange outgoing: tidings sends through SMTP only, and says so
    assert all(config.outgoing is None for config in mailboxes.values())
    assert any("outgoing through Exchange" in m for m in messages(result))


def test_approve_and_enable_flags() -> None:
    router = read_router_file(EXAMPLES / "exchange-onprem.xml")
    mailboxes = by_id(plan(router, approve=True, enable=True))
    assert mailboxes["mb-alice"].approved and mailboxes["mb-alice"].enabled
    assert not mailboxes["mb-carol"].enabled  # a forward-served mailbox is never polled


def test_user_specified_logs_in_as_the_mailbox_with_its_own_variable() -> None:
    result = plan(read_router_file(EXAMPLES / "pop3-smtp.xml"), directory=fabrikam_directory())
    eli = by_id(result)["mb-5d3a4c8e-1f0b-4e8e-9c1a-0a1b2c3d4e02"]
    assert eli.credentials is not None and eli.credentials.password is not None
    assert eli.credentials.username == "eli@fabrikam.example"
    assert (
        eli.credentials.password.env == "MAILBOX_MB_5D3A4C8E_1F0B_4E8E_9C1A_0A1B2C3D4E02_PASSWORD"
    )
    # the SMTP relay account differs from the mailbox's login: outgoing credentials of its own
    assert eli.outgoing is not None and eli.outgoing.credentials is not None
    assert eli.outgoing.credentials.username == "crm-relay@fabrikam.example"
    relay = {s.env: s for s in result.secrets}["ROUTER_FABRIKAM_SMTP_PASSWORD"]
    assert len(relay.used_by) == 3


# -- warnings ---------------------------------------------------------------------------


def test_the_error_sample_warns_for_everything_it_cannot_carry_over() -> None:
    result = plan(read_router_file(EXAMPLES / "with-errors.xml"))
    text = "\n".join(messages(result))
    expected = [
        "Northwind RSS: provider class RssPollingProvider is not one tidings knows",
        "Northwind POP3 unfinished: no email server",
        "Northwind Exchange 2003: authentication WindowsAuthentication",
        "Northwind Exchange 2003: Local System Account",
        "Northwind Exchange 2003: SSL is off",
        "Northwind Exchange 2003: Exchange URL path /exchange/",
        "Northwind Exchange 2003: DeleteEmails is on",
        "Northwind POP3 legacy: SSL is off",
        "deployments: 2 CRM deployments",
        "user:grace (Grace Hopper): no email address",
        "user:henry: henry@northwind.example is already served by mb-henry",
        "user:ivy: outgoing only (Northwind SMTP)",
    ]
    for line in expected:
        assert line in text
    assert len(result.warnings) == len(expected)
    assert mailbox_ids(result) == ["mb-henry"]
    henry = by_id(result)["mb-henry"]
    assert henry.outgoing is not None
    assert henry.outgoing.server_profile == "smtp-northwind-example-smtp"
    assert henry.credentials is not None and henry.credentials.password is not None
    assert henry.credentials.password.env == "MAILBOX_MB_HENRY_PASSWORD"  # Local System


def test_a_missing_address_is_warned_once_per_recipient() -> None:
    result = plan(read_router_file(EXAMPLES / "pop3-smtp.xml"))  # no crm.records
    assert result.mailboxes == ()
    subjects = [w.subject for w in result.warnings]
    assert len(subjects) == len(set(subjects)) == 3
    assert all("no email address" in w.message for w in result.warnings)


# -- against what exists: reruns --------------------------------------------------------


def test_a_second_plan_after_applying_the_first_creates_nothing() -> None:
    router = read_router_file(EXAMPLES / "exchange-onprem.xml")
    first = plan(router)
    published_profiles: dict[str, ServerProfile] = {}
    published_mailboxes: dict[str, MailboxConfig] = {}

    def put_profiles(new: dict[str, ServerProfile]) -> int:
        published_profiles.update(new)
        return len(new)

    def put_mailboxes(new: list[tuple[str, MailboxConfig]]) -> int:
        published_mailboxes.update(new)
        return len(new)

    assert apply_plan(first, put_profiles, put_mailboxes) == (1, 5)
    second = plan(router, profiles=published_profiles, mailboxes=published_mailboxes)
    assert {p.status for p in second.profiles} == {ItemStatus.UNCHANGED}
    assert {m.status for m in second.mailboxes} == {ItemStatus.UNCHANGED}
    assert apply_plan(second, put_profiles, put_mailboxes) == (0, 0)
    assert second.warnings == first.warnings
    # approving later raises the state of the unchanged mailboxes, and only that
    third = plan(router, profiles=published_profiles, mailboxes=published_mailboxes, approve=True)
    updated = dict(third.mailboxes_to_create())
    assert sorted(updated) == sorted(published_mailboxes)
    assert all(config.approved for config in updated.values())
    assert updated["mb-alice"] == msgspec.structs.replace(
        published_mailboxes["mb-alice"], approved=True
    )
    # a rerun without --approve never withdraws an approval
    published_mailboxes.update(updated)
    fourth = plan(router, profiles=published_profiles, mailboxes=published_mailboxes)
    assert fourth.mailboxes_to_create() == []


def test_an_existing_mailbox_with_other_settings_is_left_alone() -> None:
    router = read_router_file(EXAMPLES / "exchange-onprem.xml")
    alice = by_id(plan(router))["mb-alice"]
    edited = msgspec.structs.replace(alice, email_address="alice@elsewhere.example")
    other = msgspec.structs.replace(
        alice, mailbox_id="mb-bob-old", email_address="bob@contoso.example"
    )
    result = plan(router, mailboxes={"mb-alice": edited, "mb-bob-old": other})
    statuses = {m.config.mailbox_id: m.status for m in result.mailboxes}
    assert statuses["mb-alice"] == ItemStatus.EXISTING
    assert statuses["mb-bob-old"] == ItemStatus.EXISTING
    assert "mb-bob" not in statuses
    assert {"mb-alice", "mb-bob-old"}.isdisjoint(dict(result.mailboxes_to_create()))
    text = "\n".join(messages(result))
    assert "mb-alice: a mailbox of this id exists with other settings" in text
    assert "bob@contoso.example already has mailbox mb-bob-old" in text


def test_planning_is_deterministic() -> None:
    router = read_router_file(EXAMPLES / "with-errors.xml")
    assert plan(router) == plan(router)


# -- no secret ever copied, printed or published ---------------------------------------


def published_bytes(result: MigrationPlan) -> list[bytes]:
    """What applying `result` would publish, encoded as on the topics."""
    records: list[bytes] = []

    def put_profiles(new: dict[str, ServerProfile]) -> int:
        records.extend(msgspec.json.encode(p) for p in new.values())
        return len(new)

    def put_mailboxes(new: list[tuple[str, MailboxConfig]]) -> int:
        records.extend(msgspec.json.encode(c) for _, c in new)
        return len(new)

    apply_plan(result, put_profiles, put_mailboxes)
    return records


def test_no_password_in_plan_output_or_published_records() -> None:
    from rich.console import Console

    for path in EXAMPLES.glob("*.xml"):
        router = read_router_file(path)
        result = plan(router, directory=fabrikam_directory())
        console = Console(record=True, width=250)
        print_plan(result, router, console)
        shown = console.export_text()
        records = published_bytes(result)
        assert records, path.name
        everything = shown + b"".join(records).decode() + msgspec.json.encode(result).decode()
        assert not any(marker in everything for marker in PASSWORD_MARKERS), path.name


def test_cli_dry_run_fails_clearly_on_a_missing_or_invalid_file(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(migrate, ["email-router", str(tmp_path / "EmailAgent.xml")])
    assert missing.exit_code == 1
    assert "does not exist" in missing.output and "EmailAgent.xml" in missing.output
    bad = tmp_path / "bad.xml"
    bad.write_text("<Configuration><ProviderConfiguration>")
    invalid = runner.invoke(migrate, ["email-router", str(bad), "--dry-run"])
    assert invalid.exit_code == 1
    assert "not well-formed XML" in invalid.output
    assert "Traceback" not in invalid.output
