"""The `tidings` command line."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import msgspec
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipeline.bootstrap import bring_up, embedded_broker
from pipeline.config import ConfigError, load_config
from pipeline.migrate import migrate
from schemas.config import TidingsConfig
from schemas.topics import TopicSpec


def _console(stderr: bool = False) -> Console:
    """A console that does not cut output to 80 columns when it is not a terminal
    (pipes, logs, CI): tables get 200 columns unless COLUMNS says otherwise."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or "COLUMNS" in os.environ else 200
    return Console(stderr=stderr, width=width)


console = _console()
err_console = _console(stderr=True)

EPILOG = """\b
Configuration: tidings.toml in the current directory (or --config / TIDINGS_CONFIG),
overridden by TIDINGS_* environment variables, e.g.
  TIDINGS_KAFKA__BOOTSTRAP_SERVERS=kafka1:9092,kafka2:9092
  TIDINGS_CLICKHOUSE__DSN=clickhouse://ch:8123
  TIDINGS_DATA_DIR=/var/lib/tidings
Without bootstrap servers tidings runs its own broker (tansu) and ClickHouse (chDB)
in the data directory (.tidings/ by default).
"""


class Context:
    """What every command needs: the config file path and the loaded configuration."""

    def __init__(self, config_path: Path | None) -> None:
        self.config_path = config_path
        self._config: TidingsConfig | None = None

    @property
    def config(self) -> TidingsConfig:
        if self._config is None:
            try:
                self._config = load_config(self.config_path)
            except ConfigError as exc:
                fail(str(exc), "fix the file or the TIDINGS_* variable it names")
        assert self._config is not None
        return self._config


def fail(message: str, hint: str | None = None) -> Any:
    """Print one error line (and what to do next) and exit 1."""
    text = f"{message} — {hint}" if hint else message
    line = " ".join(text.split())
    err_console.print(f"[bold red]error:[/] {escape(line)}", soft_wrap=True)
    sys.exit(1)


pass_context = click.make_pass_decorator(Context)


def _publish(config: TidingsConfig, spec: TopicSpec[Any], records: list[tuple[str, Any]]) -> int:
    """Publish (key, value) records to a topic and wait for the acks; returns the count."""
    from pipeline.publish import publish

    return asyncio.run(publish(config.kafka, config.topic_prefix, spec, records))


@click.group(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="TIDINGS_CONFIG",
    help="TOML configuration file (default: ./tidings.toml when present).",
)
@click.pass_context
def main(ctx: click.Context, config_path: Path | None) -> None:
    """tidings: mailboxes in, CRM activities out — server-side sync on Kafka.

    Start with `tidings demo`, which runs the whole pipeline on embedded defaults
    and the demo data, then explore with `tidings query`.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # SIGTERM unwinds like Ctrl-C does, so child processes and an embedded broker
    # this command started are stopped on the way out (asyncio loops override this
    # with their own graceful handlers while they run).
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    ctx.obj = Context(config_path)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


# -- demo / run ----------------------------------------------------------------


@main.command()
@click.option("--follow", is_flag=True, help="Keep running and print new activities as they land.")
@pass_context
def demo(ctx: Context, follow: bool) -> None:
    """Run the whole pipeline on the demo data and print a summary.

    Starts the embedded broker and ClickHouse, loads the demo CRM records and
    four mailboxes (examples/), runs connectors, processors and sinks until every
    message is decided, and prints what became of each: promoted, skipped (by
    reason) or errored, and how activities were correlated. Running it again
    changes nothing: every id is stable.
    """
    from pipeline.demo import DemoError, run_demo

    try:
        sys.exit(run_demo(ctx.config, ctx.config_path, follow, console))
    except DemoError as exc:
        fail(str(exc))


@main.command()
@click.argument(
    "role", type=click.Choice(["connectors", "processors", "sinks", "all"]), default="all"
)
@click.option(
    "--until-idle",
    is_flag=True,
    help="Exit 0 once every mailbox is synced and every topic drained (batch imports, scripts).",
)
@pass_context
def run(ctx: Context, role: str, until_idle: bool) -> None:
    """Run a deployable process: connectors, processors, sinks, or all of them.

    `all` supervises one process per role (restarting any that dies). SIGTERM
    drains, commits and exits. Scale out by running more `connectors` or
    `processors` processes against the same Kafka: they share the work through
    consumer groups.
    """
    from pipeline.roles import run_role
    from pipeline.run_all import run_all

    infra = bring_up(ctx.config)
    try:
        if role == "all":
            code = run_all(infra, ctx.config_path, until_idle, console)
        else:
            code = run_role(infra.config, role, until_idle)
    finally:
        infra.close()
    sys.exit(code)


# -- data in -------------------------------------------------------------------


@main.group()
def crm() -> None:
    """CRM records: the contacts, accounts, leads, users and queues email resolves to."""


@crm.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), help="Default: by extension.")
@pass_context
def crm_import(ctx: Context, file: Path, fmt: str | None) -> None:
    """Publish records from a CSV or JSON Lines FILE to crm.records.

    \b
    CSV columns: id,type,name,emails,parent_account (emails separated by ';').
    JSON Lines: {"id": "c-1", "type": "contact", "name": "Dana", "emails": [...],
                 "parent_account": "contoso"}
    A JSON line with "type": "email" is an email already tracked in the CRM
    (message_id, subject, tracking_token, regarding, owner, from, to, sent_at);
    it goes to crm.activities so replies and tracking tokens correlate to it.
    """
    from pipeline.crm_import import ImportFileError, read_import_file
    from schemas.topics import CRM_ACTIVITIES, CRM_RECORDS

    try:
        batch = read_import_file(file, fmt)
    except ImportFileError as exc:
        fail(str(exc), "fix that line and import again (imports are idempotent)")
    infra = bring_up(ctx.config)
    try:
        records = _publish(infra.config, CRM_RECORDS, [(r.record_id, r) for r in batch.records])
        tracked = _publish(
            infra.config, CRM_ACTIVITIES, [(a.activity_id, a) for a in batch.activities]
        )
    finally:
        infra.close()
    console.print(f"published {records} records and {tracked} tracked emails from {file}")


@main.group()
def mailbox() -> None:
    """Mailboxes: one per user or queue, each with its incoming filter and state.

    \b
    States (as in Dynamics 365 server-side sync):
      pending-approval  added with --state pending-approval; not read
      approved          approved (`mailbox approve`), not enabled yet; not read
      tested            approved, and its last `mailbox test` passed; not read
      enabled           read by the connectors (only approved + enabled are)
      disabled          by `mailbox disable` or a permanent error (wrong
                        password, missing mailbox, retries exhausted): the
                        reason is on it; `mailbox enable` clears it
    Each mailbox has one owner (user:NAME or queue:NAME) and each owner one
    mailbox; `mailbox remap` moves a mailbox and records the broken link.
    See them all with `tidings status` (add --watch to follow).
    """


@mailbox.command("add")
@click.option("--id", "mailbox_id", required=True, help="Mailbox id, e.g. mb-alice.")
@click.option(
    "--protocol",
    type=click.Choice(["maildir", "imap", "pop3"]),
    default="maildir",
    show_default=True,
    help="How to read it (EWS and Graph arrive with a later release).",
)
@click.option(
    "--path",
    type=click.Path(path_type=Path, file_okay=False),
    help="Maildir root (with cur/ new/ tmp/); maildir only.",
)
@click.option(
    "--server-profile",
    help="IMAP/POP3: a server profile (host, TLS, limits): [server_profiles.NAME] in "
    "tidings.toml or one added with `tidings profile add`.",
)
@click.option("--user", "username", help="IMAP/POP3 login name (default: the mailbox address).")
@click.option("--password-env", help="IMAP/POP3: environment variable holding the password.")
@click.option(
    "--password-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="IMAP/POP3: file holding the password (never stored, only referenced).",
)
@click.option("--owner", required=True, help="user:NAME or queue:NAME.")
@click.option(
    "--filter",
    "incoming_filter",
    default="responses",
    show_default=True,
    type=click.Choice(["all", "responses", "crm-records", "email-enabled", "none"]),
    help="Which incoming email becomes an activity.",
)
@click.option(
    "--auto-create",
    default="none",
    show_default=True,
    type=click.Choice(["none", "contact", "lead"]),
    help="Create a contact or lead for the unknown sender of incoming email that is tracked.",
)
@click.option(
    "--forward-mailbox",
    is_flag=True,
    help="Users' rules forward mail here as attachments; each is decided as their own mail.",
)
@click.option("--email", help="The mailbox's address (default: <owner>@localhost).")
@click.option(
    "--folder",
    "folders",
    multiple=True,
    help="Folder to read (repeatable). Maildir: replaces INBOX+Sent; IMAP: added to them.",
)
@click.option(
    "--since",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    help="IMAP/POP3: process email from this date on (initial sync skips older mail).",
)
@click.option(
    "--delete-from-server",
    is_flag=True,
    help="POP3: delete messages once synced (default: leave them on the server).",
)
@click.option(
    "--outgoing-profile",
    help="An smtp server profile to send the CRM's email through (and for the outgoing "
    "part of `tidings mailbox test`); logs in with the mailbox's credentials.",
)
@click.option(
    "--state",
    type=click.Choice(["enabled", "approved", "pending-approval"]),
    default="enabled",
    show_default=True,
    help="Start enabled (read at once), approved (test, then `mailbox enable`), or "
    "pending approval (`mailbox approve` first).",
)
@pass_context
def mailbox_add(
    ctx: Context,
    mailbox_id: str,
    protocol: str,
    path: Path | None,
    server_profile: str | None,
    username: str | None,
    password_env: str | None,
    password_file: Path | None,
    owner: str,
    incoming_filter: str,
    auto_create: str,
    forward_mailbox: bool,
    email: str | None,
    folders: tuple[str, ...],
    since: datetime | None,
    delete_from_server: bool,
    outgoing_profile: str | None,
    state: str,
) -> None:
    """Add (or replace) a mailbox; connectors pick it up within seconds.

    \b
    Maildir:  tidings mailbox add --id mb-ann --owner user:ann --path ~/Maildir
    IMAP:     tidings mailbox add --id mb-bob --owner user:bob --protocol imap \\
                --server-profile corp --user bob --password-env BOB_IMAP_PASSWORD
    \b
    One mailbox per owner: adding a second mailbox for user:bob is refused
    (remove or remap the first), and replacing mb-bob with another owner is a
    remap (`tidings mailbox remap mb-bob --owner user:NEW`).
    """
    from pipeline.mailboxes import (
        MailboxDefinitionError,
        MailboxStateError,
        check_add,
        mailbox_state,
        maildir_mailbox,
        server_mailbox,
    )
    from schemas.mailbox import AutoCreate, OutgoingSettings
    from schemas.secret import SecretRef
    from schemas.topics import MAILBOX_CONFIG

    try:
        if protocol == "maildir":
            if path is None:
                fail("--path is required for a Maildir mailbox")
            assert path is not None
            config = maildir_mailbox(
                mailbox_id, owner, path, incoming_filter, email, list(folders) or None
            )
            if not path.is_dir():
                err_console.print(f"[yellow]warning:[/] {path} does not exist yet")
        else:
            if not server_profile:
                fail(f"--server-profile is required for {protocol}", _profiles_hint(ctx.config))
            if bool(password_env) == bool(password_file):
                fail("give exactly one of --password-env or --password-file")
            secret = (
                SecretRef(env=password_env)
                if password_env
                else SecretRef(file=str(Path(str(password_file)).resolve()))
            )
            config = server_mailbox(
                mailbox_id,
                owner,
                protocol,
                str(server_profile),
                username,
                secret,
                incoming_filter=incoming_filter,
                email=email,
                folders=list(folders) or None,
                leave_on_server=not delete_from_server,
                process_email_from=since.replace(tzinfo=UTC) if since else None,
            )
    except MailboxDefinitionError as exc:
        fail(str(exc))
    config = msgspec.structs.replace(
        config,
        auto_create=AutoCreate(auto_create),
        forward_mailbox=forward_mailbox,
        approved=state != "pending-approval",
        enabled=state == "enabled",
        outgoing=OutgoingSettings(server_profile=outgoing_profile) if outgoing_profile else None,
    )
    infra = bring_up(ctx.config)
    try:
        _check_mailbox_profiles(infra.config, config)
        configs, _ = _read_mailboxes(infra.config)
        try:
            check_add(configs, config)
        except MailboxStateError as exc:
            fail(str(exc))
        _publish(infra.config, MAILBOX_CONFIG, [(mailbox_id, config)])
    finally:
        infra.close()
    added = f"mailbox {mailbox_id} ({config.owner}, filter {incoming_filter}) added"
    if not config.enabled:
        step = "approve" if not config.approved else "test --enable"
        added += f", {mailbox_state(config).value}: next `tidings mailbox {step} {mailbox_id}`"
    console.print(added, soft_wrap=True)


def _check_mailbox_profiles(config: TidingsConfig, mailbox: Any) -> None:
    """Refuse a mailbox naming a server or outgoing profile that does not exist (in
    tidings.toml or on server.profiles) or speaks another protocol."""
    from schemas.mailbox import Protocol

    profiles = _effective_profiles(config)
    if mailbox.server_profile is not None:
        chosen = profiles.get(mailbox.server_profile)
        if chosen is None:
            fail(f"no server profile {mailbox.server_profile!r}", _profiles_hint(profiles))
        elif chosen.protocol != mailbox.protocol:
            fail(
                f"server profile {mailbox.server_profile!r} is {chosen.protocol.value}, "
                f"not {mailbox.protocol.value}",
                _profiles_hint(profiles),
            )
    if mailbox.outgoing is not None:
        name = mailbox.outgoing.server_profile
        sender = profiles.get(name)
        if sender is None or sender.protocol != Protocol.SMTP:
            fail(
                f"--outgoing-profile {name!r} is not an smtp server profile",
                _profiles_hint(profiles),
            )


def _where(config: Any) -> str:
    """Where a mailbox lives, for tables: its Maildir path or protocol, user and profile."""
    if config.maildir is not None:
        return str(config.maildir.path)
    user = config.credentials.username if config.credentials else "?"
    return f"{config.protocol.value} {user} @ {config.server_profile}"


def _profiles_hint(profiles: Any) -> str:
    """What to do about a missing profile: the known ones, and how to add one."""
    names = profiles.server_profiles if isinstance(profiles, TidingsConfig) else profiles
    known = ", ".join(sorted(names)) or "none yet"
    return (
        f"known server profiles: {known}; add one with `tidings profile add` or "
        "[server_profiles.NAME] in tidings.toml"
    )


def _effective_profiles(config: TidingsConfig) -> dict[str, Any]:
    """The server profiles in force: tidings.toml's, replaced by published ones."""
    from pipeline.profiles import read_published
    from schemas.mailbox import merged_profiles

    return merged_profiles(config.server_profiles, asyncio.run(read_published(config)))


def _read_mailboxes(config: TidingsConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every mailbox configuration and its latest status, from Kafka."""
    from pipeline.idle import read_compacted
    from schemas.topics import MAILBOX_CONFIG, MAILBOX_STATUS

    async def read() -> tuple[dict[str, Any], dict[str, Any]]:
        return (
            await read_compacted(config, MAILBOX_CONFIG),
            await read_compacted(config, MAILBOX_STATUS),
        )

    try:
        return asyncio.run(read())
    except TimeoutError:
        fail("the broker did not answer in time", "check it runs, then try again")
        raise


@mailbox.command("list")
@pass_context
def mailbox_list(ctx: Context) -> None:
    """List mailboxes with their owner, filter, state and last sync.

    \b
    state is pending-approval, approved, tested, enabled or disabled; an
    enabled mailbox no connector has reported on yet shows "(not run yet)". The last
    column is the last error, or for a disabled mailbox why it is disabled.
    `tidings mailbox show ID` has the details.
    """
    from pipeline.mailboxes import disabled_reason

    infra = bring_up(ctx.config)
    try:
        configs, statuses = _read_mailboxes(infra.config)
    finally:
        infra.close()
    table = Table(header_style="bold")
    columns = ("mailbox", "owner", "address", "filter", "state", "last sync", "items", "where")
    for column in (*columns, "last error / why disabled"):
        table.add_column(column)
    for mailbox_id, config in sorted(configs.items()):
        status = statuses.get(mailbox_id)
        last = (
            status.last_sync_at.strftime("%Y-%m-%d %H:%M:%S")
            if status and status.last_sync_at
            else "never"
        )
        why = disabled_reason(config, status)
        if why is None and status and status.last_error_code:
            why = f"{status.last_error_code}: {status.last_error}"
        table.add_row(
            mailbox_id,
            str(config.owner),
            config.email_address,
            config.incoming_filter.value,
            _list_state(config, status),
            last,
            str(status.counters.items_listed) if status else "",
            _where(config),
            escape(why or ""),
        )
    console.print(table)
    if not configs:
        console.print("no mailboxes yet: add one with `tidings mailbox add` or run `tidings demo`")


def _list_state(config: Any, status: Any) -> str:
    """The state column of `mailbox list`: the mailbox's state, and for an enabled one no
    connector has reported on yet, that it has not run."""
    from pipeline.mailboxes import mailbox_state
    from schemas.mailbox import SyncState

    state = mailbox_state(config, status)
    return "enabled (not run yet)" if state == SyncState.ENABLED and status is None else state.value


@mailbox.command("reconcile")
@click.argument("mailbox_id")
@pass_context
def mailbox_reconcile(ctx: Context, mailbox_id: str) -> None:
    """Compare what the mail server holds with what tidings emitted.

    Every item on the server (since the mailbox's start date) must have been
    emitted to mail.changes; each gap is printed and published to sync.errors.
    Run it when the mailbox is caught up (see `tidings mailbox list`). Exits 1
    when there are gaps.
    """
    from connectors.errors import ConnectorError
    from pipeline.reconcile import reconcile

    infra = bring_up(ctx.config)
    try:
        config = msgspec.structs.replace(
            infra.config, server_profiles=_effective_profiles(infra.config)
        )
        report = asyncio.run(reconcile(config, mailbox_id))
    except LookupError as exc:
        fail(str(exc))
    except ConnectorError as exc:
        fail(f"cannot list {mailbox_id}: {exc.message}", "fix the mailbox or its server profile")
    finally:
        infra.close()
    table = Table(header_style="bold")
    for column in ("folder", "on server", "emitted", "missing", "stale"):
        table.add_column(column, justify="left" if column == "folder" else "right")
    for folder in report.folders:
        table.add_row(
            folder.folder,
            str(folder.on_server),
            str(folder.emitted),
            str(len(folder.missing)),
            str(len(folder.stale)),
        )
    console.print(table)
    for folder in report.folders:
        for item in folder.missing[:20]:
            console.print(f"missing  {folder.folder}/{item}")
        for item in folder.stale[:20]:
            console.print(f"stale    {folder.folder}/{item}")
    if report.clean:
        console.print(f"{mailbox_id}: every item on the server was emitted")
    else:
        err_console.print(
            f"[bold red]{mailbox_id}: gaps found[/] — published to sync.errors; "
            "see `tidings query \"SELECT * FROM tidings.sync_errors WHERE code LIKE 'Reconcile%'\"`"
        )
        sys.exit(1)


def _actor() -> str:
    """Who runs the command, for the records it leaves ("" when unknown)."""
    import getpass

    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return ""


def _change_mailbox(ctx: Context, mailbox_id: str, change: Any, done: str) -> Any:
    """Read a mailbox's configuration, apply `change` (config, now → config; raises
    MailboxStateError to refuse), publish it when it changed, and say `done`."""
    from pipeline.mailboxes import MailboxStateError, mailbox_state
    from schemas.base import utc_now
    from schemas.topics import MAILBOX_CONFIG

    infra = bring_up(ctx.config)
    try:
        configs, _ = _read_mailboxes(infra.config)
        config = _known(configs, mailbox_id)
        try:
            updated = change(config, utc_now())
        except MailboxStateError as exc:
            fail(str(exc))
        if updated != config:
            _publish(infra.config, MAILBOX_CONFIG, [(mailbox_id, updated)])
    finally:
        infra.close()
    state = mailbox_state(updated).value
    note = "" if updated != config else " (nothing to change)"
    console.print(f"mailbox {mailbox_id} {done}{note}: now {state}")
    return updated


def _known(configs: dict[str, Any], mailbox_id: str) -> Any:
    if mailbox_id not in configs:
        known = ", ".join(sorted(configs)[:10]) or "none yet"
        fail(f"no mailbox {mailbox_id!r} (mailboxes: {known})", "see `tidings mailbox list`")
    return configs[mailbox_id]


@mailbox.command("show")
@click.argument("mailbox_id")
@click.option("--errors", "error_count", default=5, show_default=True, help="Last errors shown.")
@pass_context
def mailbox_show(ctx: Context, mailbox_id: str, error_count: int) -> None:
    """Everything about one mailbox: configuration, state and why, last test, latest
    status from its connector, and its last errors."""
    from pipeline.status import recent_errors, show_mailbox

    infra = bring_up(ctx.config)
    try:
        configs, statuses = _read_mailboxes(infra.config)
        config = _known(configs, mailbox_id)
        try:
            errors = asyncio.run(recent_errors(infra.config, mailbox_id, error_count))
        except TimeoutError:
            errors = []
    finally:
        infra.close()
    console.print(show_mailbox(config, statuses.get(mailbox_id), errors))


@mailbox.command("approve")
@click.argument("mailbox_id")
@pass_context
def mailbox_approve(ctx: Context, mailbox_id: str) -> None:
    """Approve a mailbox (pending approval → approved); then test and enable it.

    \b
    Processors only promote email of approved mailboxes, and connectors only
    read approved and enabled ones.
      tidings mailbox approve mb-bob
      tidings mailbox test mb-bob --enable
    """
    from pipeline.mailboxes import approve

    _change_mailbox(ctx, mailbox_id, approve, "approved")


@mailbox.command("enable")
@click.argument("mailbox_id")
@pass_context
def mailbox_enable(ctx: Context, mailbox_id: str) -> None:
    """Enable an approved mailbox: connectors start reading it within seconds.

    Also clears a disable (by `mailbox disable` or by a permanent error): fix
    the cause first (password, server, mailbox name), then enable; a mailbox
    that still fails is disabled again with the new reason. Testing first
    (`tidings mailbox test ID --enable`) tells you before it runs.
    """
    from pipeline.mailboxes import enable

    _change_mailbox(ctx, mailbox_id, enable, "enabled")


@mailbox.command("disable")
@click.argument("mailbox_id")
@click.option("--reason", default="disabled by an administrator", help="Why, kept on it.")
@pass_context
def mailbox_disable(ctx: Context, mailbox_id: str, reason: str) -> None:
    """Disable a mailbox: its connector stops reading it (its cursors are kept, so
    `tidings mailbox enable` resumes where it stopped)."""
    from pipeline.mailboxes import disable

    by = _actor()
    _change_mailbox(ctx, mailbox_id, lambda c, now: disable(c, reason, by, now), "disabled")


def _confirmed(question: str) -> bool:
    """Ask on a terminal; without one (scripts, pipes) the answer is no."""
    if not sys.stdin.isatty():
        return False
    try:
        return click.confirm(question, default=False, err=True)
    except click.Abort:
        return False


@mailbox.command("remove")
@click.argument("mailbox_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_context
def mailbox_remove(ctx: Context, mailbox_id: str, yes: bool) -> None:
    """Remove a mailbox (a tombstone on mailbox.config): connectors stop reading it.

    Activities already created stay; its owner is free for another mailbox.
    Adding it again later resumes from its stored cursors.
    """
    from schemas.topics import MAILBOX_CONFIG

    infra = bring_up(ctx.config)
    try:
        configs, _ = _read_mailboxes(infra.config)
        config = _known(configs, mailbox_id)
        if not yes and not _confirmed(f"remove mailbox {mailbox_id} of {config.owner}?"):
            fail(f"mailbox {mailbox_id} not removed", "pass --yes to remove it without asking")
        _publish(infra.config, MAILBOX_CONFIG, [(mailbox_id, None)])
    finally:
        infra.close()
    console.print(f"mailbox {mailbox_id} removed ({config.owner} has no mailbox now)")


@mailbox.command("remap")
@click.argument("mailbox_id")
@click.option("--owner", required=True, help="The new owner: user:NAME or queue:NAME.")
@pass_context
def mailbox_remap(ctx: Context, mailbox_id: str, owner: str) -> None:
    """Give a mailbox another owner, breaking the link to the old one.

    One mailbox per owner: the new owner must have no mailbox (remove or remap
    theirs first). The broken link is recorded as a MailboxRemapped notice on
    sync.errors naming the old and the new owner:
      tidings query "SELECT message FROM tidings.sync_errors FINAL
        WHERE code = 'MailboxRemapped'"
    """
    from pipeline.mailboxes import MailboxDefinitionError, MailboxStateError, remap
    from schemas.base import utc_now
    from schemas.topics import MAILBOX_CONFIG, SYNC_ERRORS

    infra = bring_up(ctx.config)
    try:
        configs, _ = _read_mailboxes(infra.config)
        _known(configs, mailbox_id)
        try:
            config, event = remap(configs, mailbox_id, owner, _actor(), utc_now())
        except (MailboxStateError, MailboxDefinitionError) as exc:
            fail(str(exc))
        _publish(infra.config, MAILBOX_CONFIG, [(mailbox_id, config)])
        _publish(infra.config, SYNC_ERRORS, [(mailbox_id, event)])
    finally:
        infra.close()
    console.print(event.message, soft_wrap=True)


@mailbox.command("sync")
@click.argument("mailbox_id")
@click.option(
    "--wait",
    "wait_s",
    type=float,
    default=0.0,
    help="Wait up to this many seconds for the sync to complete and print its result.",
)
@pass_context
def mailbox_sync(ctx: Context, mailbox_id: str, wait_s: float) -> None:
    """Poll a mailbox now instead of at its next scheduled poll.

    The request goes through mail.track to the connector worker that owns the
    mailbox, which wakes its loop. A mailbox that is not read (pending approval,
    not enabled, disabled) is refused here; see progress with `tidings status`.
    """
    import time
    import uuid

    from pipeline.mailboxes import mailbox_state
    from schemas.base import utc_now
    from schemas.mailbox import SyncState
    from schemas.topics import MAIL_TRACK
    from schemas.track import RequestKind, TrackRequest

    infra = bring_up(ctx.config)
    try:
        configs, statuses = _read_mailboxes(infra.config)
        config = _known(configs, mailbox_id)
        state = mailbox_state(config, statuses.get(mailbox_id))
        if state != SyncState.ENABLED:
            fail(
                f"mailbox {mailbox_id} is {state.value}, so tidings does not read it",
                f"enable it first: `tidings mailbox enable {mailbox_id}`",
            )
        asked = utc_now()
        request = TrackRequest(
            request_id=f"s-{uuid.uuid4().hex[:12]}",
            mailbox_id=mailbox_id,
            kind=RequestKind.SYNC,
            requested_by=_actor(),
            requested_at=asked,
        )
        _publish(infra.config, MAIL_TRACK, [(mailbox_id, request)])
        console.print(f"sync of {mailbox_id} requested ({request.request_id})")
        deadline = time.monotonic() + wait_s
        while wait_s and time.monotonic() < deadline:
            status = _read_mailboxes(infra.config)[1].get(mailbox_id)
            synced = (
                status is not None
                and status.last_sync_at is not None
                and (status.last_sync_at >= asked or status.state == SyncState.DISABLED)
            )
            if synced and status is not None and status.updated_at >= asked:
                console.print(
                    f"{mailbox_id}: {status.state.value}, last sync "
                    f"{status.last_sync_at:%H:%M:%S}, {status.last_pass_items} items"
                    + (f", error {status.last_error_code}" if status.last_error_code else "")
                )
                return
            time.sleep(0.5)
        if wait_s:
            fail(
                f"no completed sync of {mailbox_id} within {wait_s:g}s",
                "is `tidings run connectors` running? see `tidings status`",
            )
    finally:
        infra.close()


@mailbox.command("test")
@click.argument("mailbox_id")
@click.option("--enable", "then_enable", is_flag=True, help="Enable it when the test passes.")
@click.option("--timeout", "timeout_s", default=60.0, show_default=True, help="Seconds per part.")
@pass_context
def mailbox_test(ctx: Context, mailbox_id: str, then_enable: bool, timeout_s: float) -> None:
    """Test a mailbox against its servers and store the result on it (Test & Enable).

    \b
    incoming  connect, secure, log in and open every folder the connector reads
    outgoing  send a test message to the mailbox's own address through its SMTP
              profile (not run without outgoing settings)
    act       appointments, contacts and tasks: not run (Exchange / Microsoft 365)
    Each part is success, failure or not-run, with one line saying why; an
    approved mailbox whose test passed is `tested`. With --enable a passing
    test also enables it. Exit status 1 when a part failed.
    """
    from pipeline.mailbox_check import check_mailbox
    from pipeline.mailboxes import MailboxStateError, enable, mailbox_state, record_test
    from schemas.base import utc_now
    from schemas.topics import MAILBOX_CONFIG

    infra = bring_up(ctx.config)
    try:
        configs, _ = _read_mailboxes(infra.config)
        config = _known(configs, mailbox_id)
        profiles = _effective_profiles(infra.config)
        result = asyncio.run(check_mailbox(infra.config, config, profiles, timeout_s))
        now = utc_now()
        updated = record_test(config, result, now)
        if then_enable and result.passed:
            try:
                updated = enable(updated, now)
            except MailboxStateError as exc:
                _publish(infra.config, MAILBOX_CONFIG, [(mailbox_id, updated)])
                fail(f"the test passed but {exc}")
        _publish(infra.config, MAILBOX_CONFIG, [(mailbox_id, updated)])
    finally:
        infra.close()
    table = Table(header_style="bold", title=f"mailbox test of {mailbox_id}")
    for column in ("part", "result", "reason"):
        table.add_column(column, overflow="fold")
    for name, step in (
        ("incoming", result.incoming),
        ("outgoing", result.outgoing),
        ("act", result.act),
    ):
        style = {"success": "green", "failure": "bold red"}.get(step.status.value, "")
        table.add_row(
            name,
            f"[{style}]{step.status.value}[/]" if style else step.status.value,
            escape(step.reason),
        )
    console.print(table)
    if not result.passed:
        fail(
            f"mailbox {mailbox_id} failed its test: {result.reason}",
            "fix it and test again; the result is stored (see `tidings mailbox show`)",
        )
    console.print(f"mailbox {mailbox_id} passed its test: now {mailbox_state(updated).value}")


# -- server profiles -------------------------------------------------------------------


@main.group()
def profile() -> None:
    """Email server profiles: server, security, authentication and connection limit.

    \b
    Mailboxes name a profile (`mailbox add --server-profile NAME`). Profiles come
    from tidings.toml ([server_profiles.NAME]) and from the server.profiles topic
    (`tidings profile add`); a published profile replaces the file's of the same
    name for every connector within seconds, and mailboxes on it reconnect.
    """


@profile.command("add")
@click.argument("name")
@click.option("--protocol", type=click.Choice(["imap", "pop3", "smtp"]), required=True)
@click.option("--host", required=True, help="Server host name.")
@click.option("--port", type=int, help="Default: the protocol's port for --security.")
@click.option(
    "--security",
    type=click.Choice(["tls", "starttls", "plain"]),
    default="tls",
    show_default=True,
    help="TLS from the first byte, STARTTLS, or plaintext (needs --allow-plaintext).",
)
@click.option("--allow-plaintext", is_flag=True, help="Permit --security plain (loopback, tests).")
@click.option(
    "--auth",
    type=click.Choice(["password", "plain", "xoauth2"]),
    default="password",
    show_default=True,
    help="How mailboxes log in; xoauth2 needs --token-provider.",
)
@click.option("--token-provider", help="XOAUTH2: 'package.module:function' returning a token.")
@click.option(
    "--max-connections",
    type=int,
    default=10,
    show_default=True,
    help="Concurrent connections to this server per connector worker.",
)
@click.option("--timeout", "timeout_s", type=float, default=30.0, show_default=True)
@click.option("--ca-file", help="Certificate authorities to trust instead of the system's.")
@click.option("--no-verify", is_flag=True, help="Do not verify certificates (logged each time).")
@click.option("--no-idle", is_flag=True, help="IMAP: poll instead of IDLE push.")
@pass_context
def profile_add(
    ctx: Context,
    name: str,
    protocol: str,
    host: str,
    port: int | None,
    security: str,
    allow_plaintext: bool,
    auth: str,
    token_provider: str | None,
    max_connections: int,
    timeout_s: float,
    ca_file: str | None,
    no_verify: bool,
    no_idle: bool,
) -> None:
    """Add (or replace) server profile NAME on the server.profiles topic.

    \b
      tidings profile add corp --protocol imap --host imap.corp.example
      tidings profile add corp-smtp --protocol smtp --host smtp.corp.example \\
        --security starttls --max-connections 4
    """
    from pipeline.profiles import publish_profiles
    from schemas.mailbox import AuthMethod, Protocol, ServerProfile, TransportSecurity

    try:
        server = ServerProfile(
            protocol=Protocol(protocol),
            host=host,
            port=port,
            security=TransportSecurity(security),
            allow_plaintext=allow_plaintext,
            verify_certificates=not no_verify,
            ca_file=ca_file,
            auth=AuthMethod(auth),
            token_provider=token_provider,
            max_connections=max_connections,
            timeout_s=timeout_s,
            use_idle=not no_idle,
        )
    except ValueError as exc:
        fail(f"profile {name}: {exc}")
    if server.security == TransportSecurity.PLAIN and not server.allow_plaintext:
        fail("--security plain sends passwords in clear", "add --allow-plaintext if you mean it")
    infra = bring_up(ctx.config)
    try:
        publish_profiles(infra.config, {name: server})
    finally:
        infra.close()
    replaces = " (replaces the tidings.toml profile)" if name in ctx.config.server_profiles else ""
    console.print(
        f"server profile {name}{replaces}: {protocol} {host}:{server.effective_port()} "
        f"{security}, at most {max_connections} connections"
    )


@profile.command("list")
@pass_context
def profile_list(ctx: Context) -> None:
    """List the server profiles in force and where each comes from."""
    from pipeline.profiles import effective_profiles, read_published

    infra = bring_up(ctx.config)
    try:
        published = asyncio.run(read_published(infra.config))
    finally:
        infra.close()
    table = Table(header_style="bold")
    for column in ("profile", "protocol", "server", "security", "auth", "max conn", "from"):
        table.add_column(column)
    for name, entry in effective_profiles(ctx.config.server_profiles, published).items():
        server = entry.profile
        table.add_row(
            name,
            server.protocol.value,
            f"{server.host}:{server.effective_port()}",
            server.security.value,
            server.auth.value,
            str(server.max_connections),
            entry.source.value,
        )
    console.print(table)
    if not published and not ctx.config.server_profiles:
        console.print("no server profiles yet: add one with `tidings profile add`")


@profile.command("show")
@click.argument("name")
@pass_context
def profile_show(ctx: Context, name: str) -> None:
    """Every setting of server profile NAME, and where it comes from."""
    from pipeline.profiles import effective_profiles, read_published

    infra = bring_up(ctx.config)
    try:
        published = asyncio.run(read_published(infra.config))
    finally:
        infra.close()
    profiles = effective_profiles(ctx.config.server_profiles, published)
    entry = profiles.get(name)
    if entry is None:
        fail(f"no server profile {name!r}", _profiles_hint(profiles))
    assert entry is not None
    table = Table(header_style="bold", title=f"server profile {name} (from {entry.source.value})")
    table.add_column("setting")
    table.add_column("value", overflow="fold")
    for key, value in msgspec.structs.asdict(entry.profile).items():
        shown = msgspec.json.encode(value).decode() if isinstance(value, msgspec.Struct) else value
        table.add_row(key, escape(str(shown)))
    console.print(table)


@profile.command("remove")
@click.argument("name")
@pass_context
def profile_remove(ctx: Context, name: str) -> None:
    """Remove a published profile (a tombstone); a tidings.toml profile of that name is
    in force again. Mailboxes naming a profile that no longer exists are disabled
    with a Configuration error when their connector restarts them."""
    from pipeline.profiles import read_published, remove_profile

    infra = bring_up(ctx.config)
    try:
        if name not in asyncio.run(read_published(infra.config)):
            fail(
                f"no published profile {name!r}",
                "profiles from tidings.toml are removed by editing the file",
            )
        remove_profile(infra.config, name)
    finally:
        infra.close()
    console.print(f"published server profile {name} removed")


# -- status ------------------------------------------------------------------------------


@main.command()
@click.option("--watch", is_flag=True, help="Refresh in place until Ctrl-C.")
@click.option(
    "--interval", "interval_s", default=2.0, show_default=True, help="Seconds between refreshes."
)
@pass_context
def status(ctx: Context, watch: bool, interval_s: float) -> None:
    """The mailbox fleet at a glance, straight from Kafka (no ClickHouse needed).

    \b
    Columns: mailbox, owner, state, last sync, next poll, items (change events
    of the last sync), errors (since its connector first synced it), and the
    last error — or, for a disabled mailbox, why it is disabled. Below: the
    pipeline lag, messages each consumer group (connectors on mail.track,
    processors on mail.changes, sinks on their topics) has not committed yet.
    """
    from rich.live import Live

    from pipeline.status import read_snapshot, render

    async def watching(live: Live) -> None:
        while True:
            live.update(render(await read_snapshot(infra.config)), refresh=True)
            await asyncio.sleep(interval_s)

    infra = bring_up(ctx.config)
    try:
        if not watch:
            console.print(render(asyncio.run(read_snapshot(infra.config))))
            return
        with Live(console=console, auto_refresh=False) as live:
            asyncio.run(watching(live))
    except KeyboardInterrupt:
        pass
    except TimeoutError:
        fail("the broker did not answer in time", "check it runs, then try again")
    finally:
        infra.close()


@main.command()
@click.option(
    "--mailbox", "mailbox_id", required=True, help="The mailbox holding it, e.g. mb-alice."
)
@click.option(
    "--message-id",
    default="",
    help="An email's Message-ID, with or without angle brackets, e.g. '<abc@example.com>'.",
)
@click.option(
    "--item-id",
    default="",
    help="Or an appointment, contact or task: its server item id (as events and "
    "`tidings mailbox reconcile` show it).",
)
@click.option("--ical-uid", default="", help="Or a meeting, by its iCalendar UID.")
@click.option(
    "--requested-by", help="Who asks, named in the decision's explanation (default: your login)."
)
@pass_context
def track(
    ctx: Context,
    mailbox_id: str,
    message_id: str,
    item_id: str,
    ical_uid: str,
    requested_by: str | None,
) -> None:
    """Track one message, appointment, contact or task by hand, whatever the filter says.

    \b
    The connector that owns the mailbox finds the message in the folders it
    reads (whatever the mailbox's start date) and sends it on; it is promoted
    with reason ManualTrack however the filter would decide, even `none`. It is
    correlated like any email: a reply still joins its conversation, and a
    message already tracked stays one activity with this mailbox added. If the
    mailbox does not hold the message, a TrackNotFound sync error says so.
    Approval is not bypassed: an unapproved mailbox is not read at all.
    \b
    --item-id or --ical-uid instead ask for an appointment, contact or task of
    the mailbox's ACT folders (EWS and Graph mailboxes with act.enabled): it is
    sent to CRM as if it carried the tracked category (reason ManualTrack).
    \b
    See the outcome (with `tidings run` going):
      tidings query "SELECT item_id, status, explanation FROM
        tidings.promotion_decisions FINAL WHERE reason = 'ManualTrack'"
      tidings query "SELECT code, message FROM tidings.sync_errors FINAL
        WHERE code LIKE 'Track%'"
    Other services ask the same by publishing a TrackRequest to mail.track,
    keyed by mailbox id (`tidings schemas export` writes its JSON Schema).
    """
    from pipeline.idle import read_compacted
    from pipeline.track import TrackRefusedError, new_track_request
    from schemas.base import utc_now
    from schemas.topics import MAIL_TRACK, MAILBOX_CONFIG
    from schemas.track import TrackTarget, track_message_id, track_target

    try:
        target = track_target(message_id, item_id, ical_uid)
    except ValueError as exc:
        fail(f"nothing to track: {exc}", "use one of --message-id, --item-id, --ical-uid")
    if target == TrackTarget.MESSAGE:
        try:
            track_message_id(message_id)
        except ValueError as exc:
            fail(f"--message-id: {exc}", "give it as in the header, e.g. '<abc@example.com>'")
    infra = bring_up(ctx.config)
    try:
        configs = asyncio.run(read_compacted(infra.config, MAILBOX_CONFIG))
        try:
            request = new_track_request(
                configs, mailbox_id, message_id, requested_by, utc_now(),
                item_id=item_id, ical_uid=ical_uid,
            )  # fmt: skip
        except TrackRefusedError as exc:
            fail(str(exc))
        _publish(infra.config, MAIL_TRACK, [(mailbox_id, request)])
    finally:
        infra.close()
    looked_for = (
        f"<{request.message_id}>"
        if request.message_id
        else f"item {request.item_id}"
        if request.item_id
        else f"the meeting with UID {request.ical_uid}"
    )
    console.print(
        f"track request {request.request_id} sent: {mailbox_id} looks for "
        f"{looked_for}; its decision will say ManualTrack",
        soft_wrap=True,
    )


# -- data out ------------------------------------------------------------------


@main.command()
@click.argument("sql")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
)
@pass_context
def query(ctx: Context, sql: str, fmt: str) -> None:
    """Run read-only SQL against ClickHouse (tables in the `tidings` database).

    \b
    Tables: activities, activity_parties, promotion_decisions, sync_errors,
    mailbox_status. They are ReplacingMergeTree: add FINAL to read the latest
    version of each row, e.g.
      tidings query "SELECT reason, count() FROM tidings.promotion_decisions FINAL GROUP BY reason"
    With embedded chDB the running sinks process answers; otherwise tidings opens it.
    """
    from pipeline.query import QueryError, run_query
    from pipeline.reports import render_result

    try:
        result = run_query(ctx.config, sql)
    except QueryError as exc:
        fail(str(exc), "check the SQL; table names need the database, e.g. tidings.activities")
    render_result(result, console, fmt)


@main.group()
def schemas() -> None:
    """Topic payload schemas for consumers in other languages."""


@schemas.command("export")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@pass_context
def schemas_export(ctx: Context, directory: Path) -> None:
    """Write one JSON Schema file per topic into DIRECTORY."""
    from schemas.jsonschema import export_schemas

    written = export_schemas(directory, ctx.config.topic_prefix)
    for path in written:
        console.print(str(path))
    console.print(f"{len(written)} schemas written")


@main.group()
def dlq() -> None:
    """The dead-letter topic: messages a consumer could not decode, with where they came from.

    \b
    A consumer that cannot decode a message sends its original key and bytes
    here (headers: topic, partition, offset, error, consumer) before it
    commits, and goes on; a flood of them stops it (see the dlq_* settings of
    [processors] and [sinks]). Fix the cause, then replay:
      tidings dlq list                 what is there, and what is still pending
      tidings dlq replay --dry-run     what a replay would do
      tidings dlq replay               put them back on their original topics
    """


@dlq.command("list")
@click.option("--limit", default=50, show_default=True, help="Show at most this many (newest).")
@click.option("--pending", is_flag=True, help="Only letters no replay has handled yet.")
@pass_context
def dlq_list(ctx: Context, limit: int, pending: bool) -> None:
    """List dead letters: original topic, partition and offset, the consumer, the error.

    \b
    Columns: dlq (partition@offset on the DLQ), from (topic[partition]@offset),
    state (pending, or done once `tidings dlq replay` handled it), tries (failed
    replays of a letter put back with --policy reinsert), consumer, failed at,
    error, and the start of the value.
    """
    from pipeline.dlq import read_dead_letters, replay_positions

    async def read() -> tuple[list[Any], dict[int, int]]:
        return await read_dead_letters(infra.config), await replay_positions(infra.config)

    infra = bring_up(ctx.config)
    try:
        letters, resume_at = asyncio.run(read())
    finally:
        infra.close()

    def is_pending(letter: Any) -> bool:
        return bool(letter.dlq_offset >= resume_at.get(letter.dlq_partition, 0))

    waiting = [letter for letter in letters if is_pending(letter)]
    shown = waiting if pending else letters
    table = Table(header_style="bold")
    for column in ("dlq", "from", "state", "tries", "consumer", "failed at", "error", "value"):
        table.add_column(column, overflow="fold")
    for letter in shown[-limit:]:
        preview = (letter.value or b"")[:60].decode("utf-8", errors="replace")
        table.add_row(
            f"{letter.dlq_partition}@{letter.dlq_offset}",
            f"{letter.topic}[{letter.partition}]@{letter.offset}",
            "pending" if is_pending(letter) else "done",
            str(letter.replay_attempts),
            letter.consumer,
            letter.failed_at,
            escape(letter.error),
            escape(preview),
        )
    console.print(table)
    console.print(
        f"{len(letters)} dead letters, {len(waiting)} pending"
        + (f", newest {limit} shown" if len(shown) > limit else "")
    )


@dlq.command("replay")
@click.option(
    "--policy",
    type=click.Choice(["stop-on-error", "reinsert", "drop"]),
    default="stop-on-error",
    show_default=True,
    help="What to do with a letter that still does not decode.",
)
@click.option(
    "--topic",
    help="Only letters from this original topic (with or without the prefix); "
    "the others are put back on the DLQ unchanged.",
)
@click.option("--dry-run", is_flag=True, help="Decide and report, publish and commit nothing.")
@pass_context
def dlq_replay(ctx: Context, policy: str, topic: str | None, dry_run: bool) -> None:
    """Re-publish dead letters to their original topic: same key, same bytes.

    Each letter is first decoded with its original topic's codec. One that now
    decodes (the producer or the schema was fixed) is re-published; one that
    still does not is handled by --policy:

    \b
      stop-on-error  stop at it (the default); nothing after it is touched
      reinsert       put it back at the end of the DLQ, one more replay attempt
                     counted in its headers (shown by `tidings dlq list`), go on
      drop           skip it for good, counted in the report

    Safe to repeat: progress is the consumer group tidings-dlq-replay on the DLQ,
    committed after each letter's publish is acknowledged, so a second replay
    starts where the first ended and a replay stopped half way resumes. A replay
    reads up to the end the DLQ had when it started. Should a letter be
    published twice anyway (a crash between the ack and the commit), nothing
    happens twice: the original topic's consumers dedupe by stable ids. Ctrl-C
    (or SIGTERM) finishes the letter in hand and stops; run it again to resume.

    \b
    Examples:
      tidings dlq replay --dry-run                    what would happen, changes nothing
      tidings dlq replay                              replay, stop at the first bad letter
      tidings dlq replay --policy reinsert            replay the good, keep the bad for later
      tidings dlq replay --policy drop --topic crm.records
                                                      replay crm.records letters, drop
                                                      the ones that still fail

    Exit status 0 when every pending letter was handled, 1 when the replay
    stopped at a letter or was interrupted (it says where and what next).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from pipeline.dlq import Action, Policy, replay_dead_letters

    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
    )
    label = "checking" if dry_run else "replaying"

    async def replay(progress: Progress) -> Any:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        task = progress.add_task(f"{label} dead letters", total=None)
        return await replay_dead_letters(
            infra.config,
            Policy(policy),
            topic=topic,
            dry_run=dry_run,
            on_start=lambda total: progress.update(task, total=total),
            on_letter=lambda letter, action: progress.advance(task, int(action != Action.STOP)),
            stop=stop,
        )

    infra = bring_up(ctx.config)
    try:
        with Progress(*columns, console=err_console, transient=False) as progress:
            report = asyncio.run(replay(progress))
    except TimeoutError:
        fail("the broker stopped answering during the replay", "run it again: it resumes")
    finally:
        infra.close()
    _print_replay_report(report, dry_run)
    if report.interrupted:
        fail(
            f"interrupted after {report.handled} of {report.pending} letters",
            "run `tidings dlq replay` again: it resumes with the next letter",
        )
    stopped = report.stopped_at
    if stopped is not None:
        fail(
            f"stopped at {stopped.where} (from {stopped.origin}): it still does not decode: "
            f"{report.stop_reason}",
            "fix the producer or the consumer's schema and replay again, or rerun with "
            "--policy reinsert to keep it on the DLQ, or --policy drop to skip it"
            + ("; letters before it were replayed" if report.handled and not dry_run else ""),
        )


def _print_replay_report(report: Any, dry_run: bool) -> None:
    """The counts of a replay: one row per outcome, with the original topics."""
    from pipeline.dlq import Action

    title = "dlq replay (dry run: nothing published)" if dry_run else "dlq replay"
    table = Table(title=title, header_style="bold")
    table.add_column("outcome")
    table.add_column("letters", justify="right")
    table.add_column("original topics", overflow="fold")
    rows = (
        (Action.REPLAY, "would replay" if dry_run else "replayed"),
        (Action.REINSERT, "would reinsert" if dry_run else "reinserted"),
        (Action.DROP, "would drop" if dry_run else "dropped"),
        (Action.KEEP, "kept (other topics)"),
    )
    for action, name in rows:
        topics = report.by_topic.get(action, {})
        detail = ", ".join(f"{topic} {n}" for topic, n in sorted(topics.items()))
        table.add_row(name, str(report.counts[action]), escape(detail))
    stopped = report.stopped_at
    table.add_row(
        "stopped at",
        "1" if stopped else "0",
        escape(f"{stopped.where} from {stopped.origin}") if stopped else "",
    )
    console.print(table)
    left = report.pending - report.handled
    were = "letter was" if report.pending == 1 else "letters were"
    console.print(
        f"{report.pending} {were} pending, {left} still " + ("is" if left == 1 else "are")
    )


@main.group()
def broker() -> None:
    """The embedded broker (tansu storing in the data directory)."""


@broker.command("start")
@pass_context
def broker_start(ctx: Context) -> None:
    """Start the embedded broker and leave it running for other tidings processes."""
    embedded = embedded_broker(ctx.config)
    record = embedded.running()
    if record is not None:
        console.print(f"already running at {record.bootstrap}")
        return
    bootstrap = embedded.start()
    console.print(f"embedded broker running at {bootstrap} (stop it with `tidings broker stop`)")


@broker.command("stop")
@pass_context
def broker_stop(ctx: Context) -> None:
    """Stop the embedded broker of the data directory."""
    stopped = embedded_broker(ctx.config).stop_recorded()
    console.print("stopped" if stopped else "no embedded broker is running")


@broker.command("status")
@pass_context
def broker_status(ctx: Context) -> None:
    """Show whether the embedded broker runs, and where."""
    record = embedded_broker(ctx.config).running()
    if record is None:
        console.print("not running")
    else:
        console.print(
            f"running at {record.bootstrap} (storage {record.storage}, pid {record.broker_pid})"
        )


main.add_command(migrate)


if __name__ == "__main__":
    main()
