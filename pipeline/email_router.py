"""Migration from the Microsoft Dynamics CRM Email Router: read its configuration file,
plan the tidings server profiles and mailboxes it maps to, and publish them.

Three steps, each testable alone:

1. `parse_router_config` (pure): the XML bytes → `RouterConfig`, typed Structs of
   what the file says. DTDs and entity declarations are refused (defusedxml), so a
   hostile file cannot expand entities or reach the network.
2. `plan_migration` (pure): `RouterConfig` + what already exists (profiles, mailboxes,
   CRM users and queues) → `MigrationPlan`: the profiles and mailboxes to create,
   those already there, the password references the operator must set, and a
   warning for everything that cannot be carried over.
3. `apply_plan`: publishes the plan's new profiles and mailboxes through the two
   callables it is given (the CLI passes `pipeline.profiles.publish_profiles` and a
   mailbox.config publisher).

## The file format, and where it is documented

The Email Router keeps its configuration in `Microsoft.Crm.Tools.EmailAgent.xml`
in its Service folder; the Email Router Configuration Manager writes it ("Configure
the Email Router", Dynamics CRM 2013/2016 implementation guide, hh699786). Sources:

- "Email router configuration XML file explained" (Microsoft Dynamics CRM team blog,
  2008-07-02): the root holds one `<SystemConfiguration>` (MaxThreads,
  MaxThreadExecution, SchedulingPeriod, ConfigRefreshPeriod, ConfigUpdatePeriod,
  LogLevel; times in milliseconds) and one `<ProviderConfiguration>` per provider
  instance, each an inbound or an outbound provider, with common settings
  (ProviderAssembly, ProviderClass, the CRM server, the email server, credentials)
  and provider-specific ones.
- "Dynamics CRM: installing Email Router on multiple servers" (TechNet wiki 7527):
  a `<ProviderConfiguration>` lists the users and queues it serves as `<UserId>` and
  `<QueueId>` elements (CRM record ids), reloaded from CRM every ConfigUpdatePeriod.
- CRM 4.0 SDK, E-mail Providers (cc905766, cc905941): the provider classes
  (`Microsoft.Crm.Tools.Email.Providers.ExchangePollingMailboxProvider`,
  `Pop3PollingMailboxProvider`, `SmtpPollingSendEmailProvider`, ...), and the
  Exchange provider's `IsForwardMailbox` and `DeleteEmails` properties.
- CRM 2011 E-mail Router profiles (hh367403): access credentials are Local System
  Account, User specified (each user's own, stored in CRM, not in the file) or
  Other specified (one account with access to every mailbox of the profile).
- Dynamics 365 security guidance: passwords the Configuration Manager saves are
  encrypted in the file, with the key in EncryptionKey.xml beside it.

No complete published example of the file exists, so this parser states what it
takes (element names are matched case-insensitively, namespaces ignored):

```
<Configuration>
  <SystemConfiguration> ... </SystemConfiguration>      (read, not migrated)
  <ProviderConfiguration>
    <ProviderAssembly>Microsoft.Crm.Tools.EmailProviders.dll</ProviderAssembly>
    <ProviderClass>Microsoft.Crm.Tools.Email.Providers.Pop3PollingMailboxProvider</ProviderClass>
    <ProfileName>Fabrikam POP3</ProfileName>   (the Configuration Manager profile name)
    <Direction>Inbound | Outbound</Direction>  (optional: the class tells)
    <CrmServerUrl>http://crm.fabrikam.local/Fabrikam</CrmServerUrl>
    <EmailServerUrl>https://mail.contoso.local/EWS/Exchange.asmx</EmailServerUrl>
                    (or a bare host: mail.fabrikam.example)
    <EmailServerPort>995</EmailServerPort>     <EmailUseSSL>true</EmailUseSSL>
    <EmailAuthMode>Basic | ClearText | NTLM | WindowsAuthentication | Anonymous</EmailAuthMode>
    <EmailAccessType>OtherSpecified | UserSpecified | LocalSystem</EmailAccessType>
    <EmailUser>FABRIKAM\\svc-crm</EmailUser>    <EmailPassword>(encrypted)</EmailPassword>
    <IsForwardMailbox>true</IsForwardMailbox>   <EmailAddress>crm-forward@...</EmailAddress>
    <DeleteEmails>false</DeleteEmails>
    <UserId>CRM id</UserId>   <QueueId>CRM id</QueueId>   (any number)
  </ProviderConfiguration>
</Configuration>
```

Assumptions where the sources are thin: `ProfileName`, `Direction`, `EmailServerPort`,
`EmailUseSSL`, `EmailAccessType` and `EmailAddress` are named after the
Configuration Manager's fields; a `UserId`/`QueueId` may carry `EmailAddress` and
`Name` attributes (the real file holds only ids: the router read addresses from
CRM, and so does this migration, from crm.records). The class name decides the
protocol: one containing "Pop3"/"Pop" is POP3, "Imap" IMAP, "Smtp" SMTP
(outgoing), "Exchange" (Web Services, Online or the older WebDAV provider) EWS;
"SendEmail" in the name, or `Direction` Outbound, makes a provider outgoing.

## What maps to what

- An Email Router profile is a server plus credentials; a tidings profile is a
  server only (credentials belong to each mailbox). So every provider for the same
  (protocol, host, port, security) merges into one tidings profile, named
  `<host>-<protocol>`: an Exchange incoming and an Exchange outgoing profile on one
  server become one EWS profile, used both ways; two incoming profiles that differ
  only in their service account become one profile. A tidings profile has one
  protocol, so POP3 in + SMTP out on the same host are two profile records; the
  plan lists them together by host, and each mailbox names both (incoming
  `server_profile`, outgoing `outgoing.server_profile`). A profile that already
  exists for the same server (tidings.toml or server.profiles) is reused by name.
- Each user or queue of an incoming provider becomes one mailbox, `mb-<id>`, owned
  by `user:<id>` / `queue:<id>`; the first incoming provider naming an owner wins.
  Its outgoing provider (same owner) becomes its `outgoing` settings when that is
  SMTP; tidings sends through SMTP profiles only, so an Exchange outgoing provider
  adds no outgoing settings (a warning says so).
- A forward mailbox becomes a mailbox with `forward_mailbox` on (`mb-forward-<name>`,
  owned by `queue:forward-<name>`, since the router's forward mailbox has no CRM
  owner). The users it serves get mailboxes that are never polled (`enabled` off):
  they exist so forwarded mail is attributed to them.
- Passwords are never read into the plan: each created credential is a reference to
  an environment variable the operator sets on the connector hosts. An "Other
  specified" account is one variable per router profile
  (`ROUTER_<PROFILE>_PASSWORD`), shared by its mailboxes; "User specified" and
  "Local System" become one variable per mailbox (`MAILBOX_<ID>_PASSWORD`), logging
  in as the mailbox address. The names never start with `TIDINGS_` (those are
  configuration overrides).
- Not migrated, each with a warning: unknown provider classes, providers without a
  server, users without an email address, an owner or address served twice,
  outgoing-only users (a tidings mailbox has an incoming side), Windows integrated
  authentication (tidings logs in with a user name and password), SSL turned off
  (tidings asks for TLS or STARTTLS), a non-standard EWS path, and DeleteEmails
  (tidings leaves mail on the server until told otherwise). The system settings
  (threads, polling periods, log level) have no tidings equivalent: tidings
  schedules itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlsplit
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as safe_xml  # type: ignore[import-untyped]
import msgspec
from defusedxml import DefusedXmlException

from schemas.base import RecordRef
from schemas.crm import CrmRecord
from schemas.mailbox import (
    AuthMethod,
    Credentials,
    ImapSettings,
    MailboxConfig,
    OutgoingSettings,
    Pop3Settings,
    Protocol,
    ServerProfile,
    TransportSecurity,
)
from schemas.secret import SecretRef

MAX_FILE_BYTES = 32 * 1024 * 1024
"""A router configuration larger than this is refused (real ones are kilobytes to a
few megabytes, even with thousands of users)."""

STANDARD_EWS_PATH = "/ews/exchange.asmx"


class EmailRouterError(ValueError):
    """The file is not a usable Email Router configuration; the message says why."""


class Direction(StrEnum):
    """Whether a router provider reads mail into CRM or sends CRM's mail."""

    INCOMING = "incoming"
    OUTGOING = "outgoing"


class AccessCredentials(StrEnum):
    """The Configuration Manager's access credentials of a profile."""

    LOCAL_SYSTEM = "local-system"  # Windows machine trust: no account in the file
    USER_SPECIFIED = "user-specified"  # each user's own, kept in CRM
    OTHER_SPECIFIED = "other-specified"  # one account for every mailbox of the profile


class ItemStatus(StrEnum):
    """What applying the plan does with one profile or mailbox."""

    CREATE = "create"
    UNCHANGED = "unchanged"  # already there with the same settings
    EXISTING = "existing"  # already there with other settings: left as it is
    UPDATE = "update"  # already there; approved or enabled now, as asked


# -- parsed file ------------------------------------------------------------------------


class RouterRecipient(msgspec.Struct, frozen=True, kw_only=True):
    """A user or queue a provider serves: its CRM id and, where the file has them, its
    address and name."""

    kind: str  # "user" or "queue"
    record_id: str | None
    email: str | None = None
    name: str | None = None


class RouterProvider(msgspec.Struct, frozen=True, kw_only=True):
    """One `<ProviderConfiguration>`: a provider instance of one router profile.

    `password_present` only says whether the file holds a password; the value is
    never read into this Struct.
    """

    position: int  # 1-based, in file order
    profile_name: str
    provider_class: str
    direction: Direction | None
    protocol: Protocol | None
    crm_server_url: str | None = None
    server_url: str | None = None
    host: str | None = None
    port: int | None = None
    url_path: str = ""
    use_ssl: bool | None = None
    auth_mode: str | None = None
    access: AccessCredentials | None = None
    email_user: str | None = None
    password_present: bool = False
    forward_mailbox: bool = False
    email_address: str | None = None
    delete_emails: bool = False
    recipients: tuple[RouterRecipient, ...] = ()


class RouterConfig(msgspec.Struct, frozen=True, kw_only=True):
    """What an Email Router configuration file says, in file order."""

    providers: tuple[RouterProvider, ...]
    system: dict[str, str] = msgspec.field(default_factory=dict)


# -- the plan ---------------------------------------------------------------------------


class MigrationWarning(msgspec.Struct, frozen=True, kw_only=True):
    """Something the migration did not carry over, or changed, and why."""

    subject: str  # the router profile, user or queue it is about
    message: str


class PlannedProfile(msgspec.Struct, frozen=True, kw_only=True):
    """A tidings server profile the plan uses: new, or one that already exists."""

    name: str
    profile: ServerProfile
    status: ItemStatus
    directions: tuple[Direction, ...]
    merged_from: tuple[str, ...]  # router profile names, in file order


class PlannedMailbox(msgspec.Struct, frozen=True, kw_only=True):
    """A mailbox the plan creates (or finds already there)."""

    config: MailboxConfig
    status: ItemStatus
    source: str  # the router profile it came from
    note: str = ""


class SecretNeeded(msgspec.Struct, frozen=True, kw_only=True):
    """A password reference the plan writes: the operator sets this variable."""

    env: str
    username: str
    used_by: tuple[str, ...]  # mailbox ids


class MigrationPlan(msgspec.Struct, frozen=True, kw_only=True):
    """Everything `tidings migrate email-router` will do, before it does it."""

    profiles: tuple[PlannedProfile, ...]
    mailboxes: tuple[PlannedMailbox, ...]
    secrets: tuple[SecretNeeded, ...]
    warnings: tuple[MigrationWarning, ...]

    def profiles_to_create(self) -> dict[str, ServerProfile]:
        """Name → profile of every profile the plan creates."""
        return {p.name: p.profile for p in self.profiles if p.status == ItemStatus.CREATE}

    def mailboxes_to_create(self) -> list[tuple[str, MailboxConfig]]:
        """(mailbox id, config) of every mailbox the plan creates or updates."""
        return [
            (m.config.mailbox_id, m.config)
            for m in self.mailboxes
            if m.status in (ItemStatus.CREATE, ItemStatus.UPDATE)
        ]


# -- parsing ----------------------------------------------------------------------------


def read_router_file(path: Path | str) -> RouterConfig:
    """Read and parse a router configuration file; raises EmailRouterError (never
    OSError) with a message fit for one line."""
    file = Path(path)
    try:
        if file.stat().st_size > MAX_FILE_BYTES:
            raise EmailRouterError(f"{file} is larger than {MAX_FILE_BYTES // 2**20} MiB")
        data = file.read_bytes()
    except FileNotFoundError:
        raise EmailRouterError(f"{file} does not exist") from None
    except IsADirectoryError:
        raise EmailRouterError(f"{file} is a directory, not a file") from None
    except OSError as exc:
        raise EmailRouterError(f"cannot read {file}: {exc.strerror}") from None
    return parse_router_config(data, source=str(file))


def parse_router_config(data: bytes, source: str = "the file") -> RouterConfig:
    """Parse the bytes of a `Microsoft.Crm.Tools.EmailAgent.xml`.

    Raises EmailRouterError when the bytes are not well-formed XML, declare a DTD or
    entities, or hold no `<ProviderConfiguration>` and no `<SystemConfiguration>`.
    """
    try:
        root = safe_xml.fromstring(data, forbid_dtd=True, forbid_entities=True)
    except DefusedXmlException:
        raise EmailRouterError(
            f"{source} declares a DTD or entities, which an Email Router file never does; "
            "refusing to read it"
        ) from None
    except ParseError as exc:
        raise EmailRouterError(f"{source} is not well-formed XML ({exc})") from None
    providers = [
        _provider(element, position)
        for position, element in enumerate(_all(root, "ProviderConfiguration"), start=1)
    ]
    system_element = _first(root, "SystemConfiguration")
    if not providers and system_element is None:
        raise EmailRouterError(
            f"{source} has no <ProviderConfiguration> or <SystemConfiguration>: it is not an "
            "Email Router configuration (Microsoft.Crm.Tools.EmailAgent.xml)"
        )
    system = (
        {_local(child.tag): (child.text or "").strip() for child in system_element}
        if system_element is not None
        else {}
    )
    return RouterConfig(providers=tuple(providers), system=system)


def _provider(element: Element, position: int) -> RouterProvider:
    provider_class = _text(element, "ProviderClass") or ""
    short_class = provider_class.rsplit(".", 1)[-1]
    protocol = protocol_of_class(short_class)
    direction = _direction(_text(element, "Direction"), short_class, protocol)
    server_url = _text(element, "EmailServerUrl") or _text(element, "EmailServer")
    host, url_port, path, url_ssl = _split_server(server_url)
    port_text = _text(element, "EmailServerPort") or _text(element, "EmailPort")
    port = _int(port_text) if port_text else url_port
    use_ssl = _bool(_text(element, "EmailUseSSL"))
    if use_ssl is None:
        use_ssl = url_ssl
    name = _text(element, "ProfileName") or _text(element, "Name")
    forward = _bool(_text(element, "IsForwardMailbox")) or False
    recipients = [
        _recipient(child, "user") for child in _all(element, "UserId") if _recipient_ok(child)
    ] + [_recipient(child, "queue") for child in _all(element, "QueueId") if _recipient_ok(child)]
    return RouterProvider(
        position=position,
        profile_name=name or f"provider {position} ({short_class or 'no class'})",
        provider_class=short_class,
        direction=direction,
        protocol=protocol,
        crm_server_url=_text(element, "CrmServerUrl"),
        server_url=server_url,
        host=host,
        port=port,
        url_path=path,
        use_ssl=use_ssl,
        auth_mode=_text(element, "EmailAuthMode"),
        access=_access(_text(element, "EmailAccessType") or _text(element, "AccessCredentials")),
        email_user=_text(element, "EmailUser"),
        password_present=bool(_text(element, "EmailPassword")),
        forward_mailbox=forward,
        email_address=_address(_text(element, "EmailAddress")),
        delete_emails=_bool(_text(element, "DeleteEmails")) or False,
        recipients=tuple(recipients),
    )


def protocol_of_class(short_class: str) -> Protocol | None:
    """The tidings protocol of a router provider class (None: not one tidings knows)."""
    name = short_class.lower()
    if "pop" in name:
        return Protocol.POP3
    if "imap" in name:
        return Protocol.IMAP
    if "smtp" in name:
        return Protocol.SMTP
    if "exchange" in name:
        return Protocol.EWS
    return None


def _direction(text: str | None, short_class: str, protocol: Protocol | None) -> Direction | None:
    value = (text or "").strip().lower()
    if value in ("inbound", "incoming", "in"):
        return Direction.INCOMING
    if value in ("outbound", "outgoing", "out"):
        return Direction.OUTGOING
    name = short_class.lower()
    if protocol == Protocol.SMTP or "send" in name:
        return Direction.OUTGOING
    if "mailbox" in name or protocol in (Protocol.POP3, Protocol.IMAP):
        return Direction.INCOMING
    return None


def _split_server(url: str | None) -> tuple[str | None, int | None, str, bool | None]:
    """(host, port, path, ssl from the scheme) of an EmailServerUrl: a URL or a bare
    host[:port]."""
    if not url:
        return None, None, "", None
    text = url.strip()
    if "://" not in text:
        text = "//" + text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return None, None, "", None
    scheme = parts.scheme.lower()
    ssl = True if scheme in ("https", "pop3s", "imaps", "smtps") else None
    if scheme in ("http", "pop3", "imap", "smtp"):
        ssl = False
    return (parts.hostname or None), port, parts.path, ssl


def _recipient_ok(element: Element) -> bool:
    return bool((element.text or "").strip() or _attr(element, "EmailAddress"))


def _recipient(element: Element, kind: str) -> RouterRecipient:
    return RouterRecipient(
        kind=kind,
        record_id=(element.text or "").strip().strip("{}").lower() or None,
        email=_address(_attr(element, "EmailAddress")),
        name=_attr(element, "Name"),
    )


def _access(text: str | None) -> AccessCredentials | None:
    value = re.sub(r"[^a-z]", "", (text or "").lower())
    if not value:
        return None
    if "local" in value or "system" in value:
        return AccessCredentials.LOCAL_SYSTEM
    if "user" in value:
        return AccessCredentials.USER_SPECIFIED
    return AccessCredentials.OTHER_SPECIFIED


def _local(tag: str) -> str:
    """A tag without its namespace."""
    return tag.rsplit("}", 1)[-1]


def _all(element: Element, name: str) -> Iterable[Element]:
    wanted = name.lower()
    return (e for e in element.iter() if _local(e.tag).lower() == wanted)


def _first(element: Element, name: str) -> Element | None:
    return next(iter(_all(element, name)), None)


def _text(element: Element, name: str) -> str | None:
    """The stripped text of the first direct child named `name`, None when empty."""
    wanted = name.lower()
    for child in element:
        if _local(child.tag).lower() == wanted:
            text = (child.text or "").strip()
            return text or None
    return None


def _attr(element: Element, name: str) -> str | None:
    wanted = name.lower()
    for key, value in element.attrib.items():
        if _local(key).lower() == wanted and value.strip():
            return value.strip()
    return None


def _bool(text: str | None) -> bool | None:
    if text is None:
        return None
    return text.strip().lower() in ("true", "1", "yes", "on")


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _address(text: str | None) -> str | None:
    value = (text or "").strip().lower()
    return value if "@" in value else None


# -- planning ---------------------------------------------------------------------------


ServerKey = tuple[Protocol, str, int, TransportSecurity]


class _Owner(msgspec.Struct, frozen=True):
    ref: RecordRef
    email: str


def plan_migration(
    router: RouterConfig,
    *,
    existing_profiles: Mapping[str, ServerProfile],
    existing_mailboxes: Mapping[str, MailboxConfig],
    directory: Mapping[str, CrmRecord],
    approve: bool,
    enable: bool,
    now: datetime,
) -> MigrationPlan:
    """The profiles, mailboxes, password references and warnings that migrating
    `router` gives, against what already exists.

    `directory` holds the CRM users and queues by record id (crm.records), where
    addresses come from when the file has only ids. Created mailboxes are `approved`
    and `enabled` as asked (the CLI defaults both off). Pure: same inputs, same plan.
    """
    warnings: list[MigrationWarning] = []
    usable = [p for p in router.providers if _usable(p, warnings)]
    _warn_provider_settings(usable, warnings)
    _warn_deployments(router.providers, warnings)
    profiles, profile_of = _plan_profiles(usable, existing_profiles)
    mailboxes, secrets = _plan_mailboxes(
        usable, profile_of, existing_mailboxes, directory, approve, enable, now, warnings
    )
    return MigrationPlan(
        profiles=tuple(profiles),
        mailboxes=tuple(mailboxes),
        secrets=tuple(secrets),
        warnings=tuple(warnings),
    )


def _usable(provider: RouterProvider, warnings: list[MigrationWarning]) -> bool:
    subject = provider.profile_name
    if provider.protocol is None:
        what = provider.provider_class or "no ProviderClass"
        warnings.append(
            MigrationWarning(
                subject=subject,
                message=f"provider class {what} is not one tidings knows (Exchange, POP3, "
                "IMAP, SMTP): not migrated",
            )
        )
        return False
    if provider.direction is None:
        warnings.append(
            MigrationWarning(
                subject=subject,
                message=f"{provider.provider_class}: cannot tell incoming from outgoing; "
                "add <Direction>Inbound</Direction> or Outbound",
            )
        )
        return False
    if provider.protocol == Protocol.SMTP and provider.direction == Direction.INCOMING:
        warnings.append(
            MigrationWarning(subject=subject, message="SMTP cannot read mail: not migrated")
        )
        return False
    if provider.direction == Direction.OUTGOING and provider.protocol in (
        Protocol.POP3,
        Protocol.IMAP,
    ):
        warnings.append(
            MigrationWarning(
                subject=subject,
                message=f"{provider.protocol.value.upper()} cannot send mail: not migrated",
            )
        )
        return False
    if not provider.host:
        warnings.append(
            MigrationWarning(
                subject=subject,
                message="no email server (EmailServerUrl): not migrated",
            )
        )
        return False
    return True


def _warn_provider_settings(
    providers: Iterable[RouterProvider], warnings: list[MigrationWarning]
) -> None:
    for p in providers:
        mode = re.sub(r"[^a-z]", "", (p.auth_mode or "").lower())
        if mode in ("ntlm", "windowsauthentication", "windows", "kerberos", "negotiate"):
            warnings.append(
                MigrationWarning(
                    subject=p.profile_name,
                    message=f"authentication {p.auth_mode}: tidings logs in with a user name "
                    "and password (set the password variables listed below)",
                )
            )
        if p.access == AccessCredentials.LOCAL_SYSTEM:
            warnings.append(
                MigrationWarning(
                    subject=p.profile_name,
                    message="Local System Account (Windows machine trust) has no equivalent: "
                    "each mailbox logs in with its address and its own password variable",
                )
            )
        if p.use_ssl is False:
            kind = "TLS" if p.protocol == Protocol.EWS else "STARTTLS"
            warnings.append(
                MigrationWarning(
                    subject=p.profile_name,
                    message=f"SSL is off in the Email Router; the tidings profile asks for {kind} "
                    "(set security = plain and allow_plaintext only for a server without TLS)",
                )
            )
        if p.protocol == Protocol.EWS and p.url_path.lower() not in ("", "/", STANDARD_EWS_PATH):
            warnings.append(
                MigrationWarning(
                    subject=p.profile_name,
                    message=f"Exchange URL path {p.url_path} is not {STANDARD_EWS_PATH} "
                    "(WebDAV or a custom path): tidings reaches Exchange by EWS at the "
                    "standard path; check the server",
                )
            )
        if p.delete_emails:
            warnings.append(
                MigrationWarning(
                    subject=p.profile_name,
                    message="DeleteEmails is on: tidings leaves mail on the server (turn "
                    "deletion on per mailbox if you want it)",
                )
            )
        if p.direction == Direction.OUTGOING and p.protocol == Protocol.EWS:
            warnings.append(
                MigrationWarning(
                    subject=p.profile_name,
                    message="outgoing through Exchange: tidings sends through SMTP profiles, so "
                    "its mailboxes get no outgoing settings (add an smtp profile for them)",
                )
            )


def _warn_deployments(
    providers: Iterable[RouterProvider], warnings: list[MigrationWarning]
) -> None:
    urls = sorted({p.crm_server_url.rstrip("/").lower() for p in providers if p.crm_server_url})
    if len(urls) > 1:
        warnings.append(
            MigrationWarning(
                subject="deployments",
                message=f"{len(urls)} CRM deployments ({', '.join(urls)}) are migrated into "
                "one tidings pipeline; migrate them one file each into separate topic "
                "prefixes if they must stay apart",
            )
        )


def server_profile_of(provider: RouterProvider) -> ServerProfile:
    """The tidings profile for a usable provider's server."""
    assert provider.protocol is not None and provider.host is not None
    protocol = provider.protocol
    if protocol == Protocol.EWS:
        security = TransportSecurity.TLS
    elif provider.use_ssl is False or (protocol == Protocol.SMTP and provider.port in (25, 587)):
        security = TransportSecurity.STARTTLS
    else:
        security = TransportSecurity.TLS
    draft = ServerProfile(protocol=protocol, host=provider.host.lower(), security=security)
    port = provider.port
    if protocol == Protocol.EWS and port is None:
        port = 443
    if port is not None and protocol != Protocol.EWS and port == draft.effective_port():
        port = None
    return msgspec.structs.replace(draft, port=port, auth=AuthMethod.PASSWORD)


def _key(profile: ServerProfile) -> ServerKey:
    port = profile.port if profile.port is not None else profile.effective_port()
    return (profile.protocol, profile.host.lower(), port, profile.security)


def _plan_profiles(
    providers: list[RouterProvider], existing: Mapping[str, ServerProfile]
) -> tuple[list[PlannedProfile], dict[int, str]]:
    """One profile per server; returns them and the profile name of each provider."""
    groups: dict[ServerKey, list[RouterProvider]] = {}
    drafts: dict[ServerKey, ServerProfile] = {}
    for provider in providers:
        profile = server_profile_of(provider)
        key = _key(profile)
        groups.setdefault(key, []).append(provider)
        drafts.setdefault(key, profile)
    existing_by_key: dict[ServerKey, str] = {}
    for name, profile in sorted(existing.items()):
        existing_by_key.setdefault(_key(profile), name)
    taken = set(existing)
    planned: list[PlannedProfile] = []
    profile_of: dict[int, str] = {}
    for key, members in groups.items():
        draft = drafts[key]
        if key in existing_by_key:
            name = existing_by_key[key]
            status = ItemStatus.UNCHANGED if existing[name] == draft else ItemStatus.EXISTING
            profile = existing[name]
        else:
            name = _free_name(f"{_slug(draft.host)}-{draft.protocol.value}", taken)
            status, profile = ItemStatus.CREATE, draft
        taken.add(name)
        directions = tuple(d for d in Direction if any(m.direction == d for m in members))
        planned.append(
            PlannedProfile(
                name=name,
                profile=profile,
                status=status,
                directions=directions,
                merged_from=tuple(dict.fromkeys(m.profile_name for m in members)),
            )
        )
        for member in members:
            profile_of[member.position] = name
    planned.sort(key=lambda p: (p.profile.host, p.profile.protocol.value, p.name))
    return planned, profile_of


def _free_name(base: str, taken: set[str]) -> str:
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    return name


def _plan_mailboxes(
    providers: list[RouterProvider],
    profile_of: Mapping[int, str],
    existing: Mapping[str, MailboxConfig],
    directory: Mapping[str, CrmRecord],
    approve: bool,
    enable: bool,
    now: datetime,
    warnings: list[MigrationWarning],
) -> tuple[list[PlannedMailbox], list[SecretNeeded]]:
    drafts = _Drafts(warnings)
    incoming = [p for p in providers if p.direction == Direction.INCOMING]
    for provider in incoming:
        profile = profile_of[provider.position]
        if provider.forward_mailbox:
            _plan_forward(provider, profile, directory, approve, enable, now, drafts)
            continue
        for recipient in provider.recipients:
            owner = _resolve(recipient, directory, provider.profile_name, warnings)
            if owner is not None:
                config = _mailbox(
                    f"mb-{_slug(owner.ref.id)}", owner, provider, profile, approve, enable, now
                )
                drafts.add(config, provider, "", with_credentials=True)
    for provider in (p for p in providers if p.direction == Direction.OUTGOING):
        _attach_outgoing(provider, profile_of, directory, drafts, warnings)
    planned = [
        _against_existing(config, source, note, existing, warnings)
        for config, source, note in drafts.items.values()
    ]
    planned.sort(key=lambda m: m.config.mailbox_id)
    needed = [
        SecretNeeded(env=env, username=username, used_by=tuple(sorted(ids)))
        for env, (username, ids) in sorted(drafts.secrets.items())
    ]
    return planned, needed


class _Drafts:
    """The mailboxes planned so far, by id, with the owner and address each serves and
    the password variables their credentials name."""

    def __init__(self, warnings: list[MigrationWarning]) -> None:
        self.items: dict[str, tuple[MailboxConfig, str, str]] = {}  # id → (config, source, note)
        self.by_owner: dict[RecordRef, str] = {}
        self.by_address: dict[str, str] = {}
        self.secrets: dict[str, tuple[str, list[str]]] = {}  # env → (username, mailbox ids)
        self.warnings = warnings

    def add(
        self, config: MailboxConfig, provider: RouterProvider, note: str, with_credentials: bool
    ) -> bool:
        """Plan `config` unless its owner or address is planned already (a warning)."""
        source = provider.profile_name
        other = self.by_owner.get(config.owner) or self.by_address.get(config.email_address)
        if other is None and config.mailbox_id in self.items:
            other = config.mailbox_id
        if other is not None:
            self.warnings.append(
                MigrationWarning(
                    subject=str(config.owner),
                    message=f"{config.email_address} is already served by {other} "
                    f"({self.items[other][1]}); not migrated again from {source}",
                )
            )
            return False
        if with_credentials:
            credentials = self.credentials(provider, config.mailbox_id, config.email_address)
            config = msgspec.structs.replace(config, credentials=credentials)
        self.items[config.mailbox_id] = (config, source, note)
        self.by_owner[config.owner] = config.mailbox_id
        self.by_address[config.email_address] = config.mailbox_id
        return True

    def credentials(self, provider: RouterProvider, mailbox_id: str, address: str) -> Credentials:
        """A login for the mailbox: the profile's "Other specified" account (one password
        variable per router profile), else the mailbox address with its own variable."""
        if provider.access == AccessCredentials.OTHER_SPECIFIED or (
            provider.access is None and provider.email_user
        ):
            username = provider.email_user or address
            env = router_password_env(provider.profile_name)
        else:
            username = address
            env = f"MAILBOX_{_env_part(mailbox_id)}_PASSWORD"
        self.secrets.setdefault(env, (username, []))[1].append(mailbox_id)
        return Credentials(username=username, password=SecretRef(env=env))


def router_password_env(profile_name: str) -> str:
    """The variable holding the password of a router profile's "Other specified" account."""
    return f"ROUTER_{_env_part(profile_name)}_PASSWORD"


def _plan_forward(
    provider: RouterProvider,
    profile: str,
    directory: Mapping[str, CrmRecord],
    approve: bool,
    enable: bool,
    now: datetime,
    drafts: _Drafts,
) -> None:
    """The forward mailbox itself, and a never-polled mailbox for each user it serves
    (so forwarded mail is attributed to them)."""
    address = provider.email_address or _address(provider.email_user)
    if address is None:
        drafts.warnings.append(
            MigrationWarning(
                subject=provider.profile_name,
                message="forward mailbox without an address (EmailAddress): not migrated",
            )
        )
        return
    slug = _slug(provider.profile_name)
    owner = _Owner(ref=RecordRef(type="queue", id=f"forward-{slug}"), email=address)
    forward = msgspec.structs.replace(
        _mailbox(f"mb-forward-{slug}", owner, provider, profile, approve, enable, now),
        forward_mailbox=True,
    )
    note = "forward mailbox (its owner has no CRM record)"
    drafts.add(forward, provider, note, with_credentials=True)
    for recipient in provider.recipients:
        served = _resolve(recipient, directory, provider.profile_name, drafts.warnings)
        if served is not None:
            config = _mailbox(
                f"mb-{_slug(served.ref.id)}", served, provider, profile, approve, False, now
            )
            note = f"mail arrives through {forward.mailbox_id}; never polled"
            drafts.add(config, provider, note, with_credentials=False)


def _resolve(
    recipient: RouterRecipient,
    directory: Mapping[str, CrmRecord],
    source: str,
    warnings: list[MigrationWarning],
) -> _Owner | None:
    """The owner and address of a recipient: the file's address, else the CRM record's."""
    record = directory.get(recipient.record_id or "")
    address = recipient.email or (
        _address(record.email_addresses[0]) if record and record.email_addresses else None
    )
    label = f"{recipient.kind}:{recipient.record_id or recipient.email}"
    if recipient.name:
        label += f" ({recipient.name})"
    if address is None:
        if any(w.subject == label and w.message.startswith("no email") for w in warnings):
            return None  # said once, for the first provider naming it
        warnings.append(
            MigrationWarning(
                subject=label,
                message=f"no email address in the file or on crm.records: not migrated from "
                f"{source} (import the CRM {recipient.kind}s first, then run again)",
            )
        )
        return None
    record_id = recipient.record_id
    if record_id is None:
        match = next(
            (
                r
                for r in directory.values()
                if r.record_type == recipient.kind
                and address in (a.lower() for a in r.email_addresses)
            ),
            None,
        )
        record_id = match.record_id if match else address
    return _Owner(ref=RecordRef(type=recipient.kind, id=record_id), email=address)


def _mailbox(
    mailbox_id: str,
    owner: _Owner,
    provider: RouterProvider,
    profile: str,
    approve: bool,
    enable: bool,
    now: datetime,
) -> MailboxConfig:
    protocol = provider.protocol
    assert protocol is not None
    return MailboxConfig(
        mailbox_id=mailbox_id,
        owner=owner.ref,
        email_address=owner.email,
        protocol=protocol,
        approved=approve,
        enabled=enable,
        server_profile=profile,
        imap=ImapSettings() if protocol == Protocol.IMAP else None,
        pop3=Pop3Settings() if protocol == Protocol.POP3 else None,
        updated_at=now,
    )


def _attach_outgoing(
    provider: RouterProvider,
    profile_of: Mapping[int, str],
    directory: Mapping[str, CrmRecord],
    drafts: _Drafts,
    warnings: list[MigrationWarning],
) -> None:
    """Give each served owner's mailbox this provider's outgoing settings (SMTP only)."""
    for recipient in provider.recipients:
        owner = _resolve(recipient, directory, provider.profile_name, warnings)
        if owner is None:
            continue
        mailbox_id = drafts.by_owner.get(owner.ref)
        if mailbox_id is None:
            warnings.append(
                MigrationWarning(
                    subject=str(owner.ref),
                    message=f"outgoing only ({provider.profile_name}): a tidings mailbox reads "
                    "mail too; add one with `tidings mailbox add`, then its outgoing settings",
                )
            )
            continue
        if provider.protocol != Protocol.SMTP:
            continue
        config, source, note = drafts.items[mailbox_id]
        if config.outgoing is not None:
            warnings.append(
                MigrationWarning(
                    subject=str(owner.ref),
                    message=f"already sends through {config.outgoing.server_profile}; "
                    f"{provider.profile_name} not used for it",
                )
            )
            continue
        credentials = None
        if provider.access == AccessCredentials.OTHER_SPECIFIED and provider.email_user:
            inherited = config.credentials.username if config.credentials else None
            if provider.email_user != inherited:
                env = router_password_env(provider.profile_name)
                drafts.secrets.setdefault(env, (provider.email_user, []))[1].append(mailbox_id)
                credentials = Credentials(username=provider.email_user, password=SecretRef(env=env))
        outgoing = OutgoingSettings(
            server_profile=profile_of[provider.position], credentials=credentials
        )
        drafts.items[mailbox_id] = (
            msgspec.structs.replace(config, outgoing=outgoing),
            source,
            note,
        )


def _against_existing(
    config: MailboxConfig,
    source: str,
    note: str,
    existing: Mapping[str, MailboxConfig],
    warnings: list[MigrationWarning],
) -> PlannedMailbox:
    """CREATE, or the status of a mailbox of the same id already on mailbox.config:
    UNCHANGED, UPDATE (the same, approved or enabled now as asked) or EXISTING (other
    settings: left alone, with a warning)."""
    old = existing.get(config.mailbox_id)
    if old is None:
        holder = next(
            (m for m in existing.values() if m.email_address.lower() == config.email_address),
            None,
        )
        if holder is not None:
            warnings.append(
                MigrationWarning(
                    subject=str(config.owner),
                    message=f"{config.email_address} already has mailbox {holder.mailbox_id}: "
                    "left as it is",
                )
            )
            return PlannedMailbox(
                config=holder, status=ItemStatus.EXISTING, source=source, note=note
            )
        return PlannedMailbox(config=config, status=ItemStatus.CREATE, source=source, note=note)
    if _same_mailbox(old, config):
        approved, enabled = old.approved or config.approved, old.enabled or config.enabled
        if (approved, enabled) == (old.approved, old.enabled):
            return PlannedMailbox(config=old, status=ItemStatus.UNCHANGED, source=source, note=note)
        raised = msgspec.structs.replace(
            old, approved=approved, enabled=enabled, updated_at=config.updated_at
        )
        return PlannedMailbox(config=raised, status=ItemStatus.UPDATE, source=source, note=note)
    warnings.append(
        MigrationWarning(
            subject=config.mailbox_id,
            message="a mailbox of this id exists with other settings: left as it is (remove "
            "it first to migrate it again)",
        )
    )
    return PlannedMailbox(config=old, status=ItemStatus.EXISTING, source=source, note=note)


def _same_mailbox(old: MailboxConfig, new: MailboxConfig) -> bool:
    """Equal but for what an operator changes after migrating (approval, enabling) and
    the time stamp. A rerun only ever raises approval and enabling, when asked: it
    never withdraws what an operator granted."""
    keep = {"updated_at": None, "approved": True, "enabled": True}
    return msgspec.structs.replace(old, **keep) == msgspec.structs.replace(new, **keep)


def _slug(text: str) -> str:
    """Lower-case letters, digits and single dashes."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def _env_part(text: str) -> str:
    """Upper-case letters, digits and single underscores (an environment variable part)."""
    return re.sub(r"[^A-Z0-9]+", "_", text.upper()).strip("_") or "X"


# -- applying ---------------------------------------------------------------------------


def apply_plan(
    plan: MigrationPlan,
    publish_profiles: Callable[[dict[str, ServerProfile]], int],
    publish_mailboxes: Callable[[list[tuple[str, MailboxConfig]]], int],
) -> tuple[int, int]:
    """Publish the plan's new profiles first (mailboxes name them), then its new and
    updated mailboxes; returns (profiles, mailboxes) published. Nothing else is
    touched, so a plan made after applying the same one publishes nothing."""
    profiles = plan.profiles_to_create()
    mailboxes = plan.mailboxes_to_create()
    published_profiles = publish_profiles(profiles) if profiles else 0
    published_mailboxes = publish_mailboxes(mailboxes) if mailboxes else 0
    return published_profiles, published_mailboxes
