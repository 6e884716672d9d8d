"""`tidings migrate`: bring a configuration from another product into tidings.

`tidings migrate email-router FILE` reads a Dynamics CRM Email Router configuration
(Microsoft.Crm.Tools.EmailAgent.xml), prints what it will create, and creates the
server profiles (server.profiles) and mailboxes (mailbox.config). The mapping rules
live in pipeline/email_router.py; this module is the command's thin shell: read what
exists, print the plan, publish it.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipeline.email_router import (
    Direction,
    EmailRouterError,
    ItemStatus,
    MigrationPlan,
    RouterConfig,
    apply_plan,
    plan_migration,
    read_router_file,
)
from schemas.base import utc_now
from schemas.config import TidingsConfig
from schemas.crm import CrmRecord
from schemas.mailbox import MailboxConfig, ServerProfile

FILE_HINT = (
    "give the path of Microsoft.Crm.Tools.EmailAgent.xml (in the Email Router's Service "
    "folder, e.g. C:\\Program Files\\Microsoft CRM Email\\Service)"
)


@click.group()
def migrate() -> None:
    """Migrate a configuration from another product into tidings."""


@migrate.command("email-router")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--dry-run", is_flag=True, help="Print the plan and publish nothing.")
@click.option(
    "--approve/--no-approve",
    default=False,
    show_default=True,
    help="Create the mailboxes approved (default: pending approval, as Dynamics does).",
)
@click.option(
    "--enable/--no-enable",
    default=False,
    show_default=True,
    help="Create the mailboxes enabled (default: disabled until you set their passwords "
    "and test them).",
)
@click.pass_context
def email_router(
    ctx: click.Context, file: Path, dry_run: bool, approve: bool, enable: bool
) -> None:
    """Migrate a Dynamics CRM Email Router configuration FILE.

    \b
    FILE is Microsoft.Crm.Tools.EmailAgent.xml from the Email Router's Service
    folder. The command prints the server profiles, mailboxes, password variables
    and warnings of the migration, then creates what is new (unless --dry-run):
      tidings migrate email-router EmailAgent.xml --dry-run
      tidings migrate email-router EmailAgent.xml
    \b
    Router profiles for the same server merge into one tidings profile (the
    credentials move to the mailboxes). Passwords are never copied from the file:
    each mailbox's password is an environment variable, listed under "passwords to
    set", that the connector hosts must have. Mailboxes are created pending
    approval and disabled; once the variables are set, run the migration again
    with --approve --enable to approve and enable them (or use `tidings mailbox
    approve ID` and `tidings mailbox enable ID`).
    Import the CRM users and queues first (`tidings crm import`): the router file
    names them by id, and their addresses come from crm.records. Running the
    migration again creates only what is missing and changes nothing else.
    """
    from pipeline.bootstrap import bring_up
    from pipeline.cli import console, fail

    try:
        router = read_router_file(file)
    except EmailRouterError as exc:
        fail(str(exc), FILE_HINT)
    config = _config(ctx)
    infra = bring_up(config)
    try:
        profiles, mailboxes, directory = asyncio.run(_existing(infra.config))
        plan = plan_migration(
            router,
            existing_profiles=profiles,
            existing_mailboxes=mailboxes,
            directory=directory,
            approve=approve,
            enable=enable,
            now=utc_now(),
        )
        print_plan(plan, router, console)
        if dry_run:
            console.print("dry run: nothing was published")
            return
        created = apply_plan(
            plan,
            lambda new: _publish_profiles(infra.config, new),
            lambda new: _publish_mailboxes(infra.config, new),
        )
    finally:
        infra.close()
    console.print(
        f"created {created[0]} server profiles and {created[1]} mailboxes from {file}"
        + ("" if any(created) else " (everything was already there)")
    )


def _config(ctx: click.Context) -> TidingsConfig:
    """The configuration `tidings` loaded, or (the group run alone) the default one."""
    from pipeline.cli import fail
    from pipeline.config import ConfigError, load_config

    parent = ctx.find_root().obj
    if parent is not None and hasattr(parent, "config"):
        loaded: TidingsConfig = parent.config
        return loaded
    path = os.environ.get("TIDINGS_CONFIG")
    try:
        return load_config(Path(path) if path else None)
    except ConfigError as exc:
        fail(str(exc), "fix the file or the TIDINGS_* variable it names")
        raise  # unreachable: fail exits


async def _existing(
    config: TidingsConfig,
) -> tuple[dict[str, ServerProfile], dict[str, MailboxConfig], dict[str, CrmRecord]]:
    """The profiles in force, the mailboxes on mailbox.config, and the CRM users and
    queues by lower-case id."""
    from pipeline.idle import read_compacted
    from pipeline.profiles import effective_profiles, read_published
    from schemas.topics import CRM_RECORDS, MAILBOX_CONFIG

    published = await read_published(config)
    profiles = {
        name: effective.profile
        for name, effective in effective_profiles(config.server_profiles, published).items()
    }
    mailboxes = await read_compacted(config, MAILBOX_CONFIG)
    records = await read_compacted(config, CRM_RECORDS)
    directory = {
        record.record_id.strip("{}").lower(): record
        for record in records.values()
        if record.record_type in ("user", "queue")
    }
    return profiles, mailboxes, directory


def _publish_profiles(config: TidingsConfig, profiles: dict[str, ServerProfile]) -> int:
    from pipeline.profiles import publish_profiles

    return publish_profiles(config, profiles)


def _publish_mailboxes(config: TidingsConfig, records: list[tuple[str, MailboxConfig]]) -> int:
    from pipeline.publish import publish
    from schemas.topics import MAILBOX_CONFIG

    return asyncio.run(publish(config.kafka, config.topic_prefix, MAILBOX_CONFIG, records))


# -- the printed plan ------------------------------------------------------------------


def print_plan(plan: MigrationPlan, router: RouterConfig, console: Console) -> None:
    """Print the plan as tables: profiles, mailboxes, passwords to set, warnings."""
    console.print(
        f"Email Router configuration: {len(router.providers)} provider entries, "
        f"{sum(len(p.recipients) for p in router.providers)} user/queue entries"
    )
    console.print(profiles_table(plan))
    console.print(mailboxes_table(plan))
    if plan.secrets:
        console.print(secrets_table(plan))
    if plan.warnings:
        console.print(warnings_table(plan))
    else:
        console.print("no warnings: everything in the file was migrated")


def profiles_table(plan: MigrationPlan) -> Table:
    """One row per tidings server profile, with the router profiles merged into it."""
    table = Table(title="server profiles", header_style="bold", title_justify="left")
    for column in ("action", "profile", "protocol", "host", "port", "security", "used for"):
        table.add_column(column)
    table.add_column("merged from (Email Router profiles)")
    for item in plan.profiles:
        profile = item.profile
        used = " + ".join("in" if d == Direction.INCOMING else "out" for d in item.directions)
        table.add_row(
            _action(item.status),
            escape(item.name),
            profile.protocol.value,
            escape(profile.host),
            str(profile.port if profile.port is not None else profile.effective_port()),
            profile.security.value,
            used,
            escape("; ".join(item.merged_from)),
        )
    return table


def mailboxes_table(plan: MigrationPlan) -> Table:
    """One row per mailbox: owner, address, the profiles it reads and sends through,
    its state and where it came from (logins are in the passwords table)."""
    table = Table(title="mailboxes", header_style="bold", title_justify="left")
    table.add_column("action")
    table.add_column("mailbox", no_wrap=True)
    table.add_column("owner", overflow="fold")
    table.add_column("address", no_wrap=True)
    table.add_column("in (profile)", overflow="fold")
    table.add_column("out (profile)", overflow="fold")
    table.add_column("state")
    table.add_column("from / note", overflow="fold")
    for item in plan.mailboxes:
        config = item.config
        outgoing = config.outgoing
        out = outgoing.server_profile if outgoing else "-"
        state = ("approved" if config.approved else "pending") + (
            ", enabled" if config.enabled else ", disabled"
        )
        source = item.source + (f" — {item.note}" if item.note else "")
        table.add_row(
            _action(item.status),
            escape(config.mailbox_id),
            escape(str(config.owner)),
            escape(config.email_address),
            escape(config.server_profile or "-"),
            escape(out),
            state,
            escape(source),
        )
    return table


def secrets_table(plan: MigrationPlan) -> Table:
    """The environment variables the connector hosts must have before mailboxes run."""
    table = Table(
        title="passwords to set (environment variables on the connector hosts)",
        header_style="bold",
        title_justify="left",
    )
    for column in ("variable", "user name", "mailboxes"):
        table.add_column(column)
    for secret in plan.secrets:
        table.add_row(secret.env, escape(secret.username), escape(", ".join(secret.used_by)))
    return table


def warnings_table(plan: MigrationPlan) -> Table:
    """What was not migrated, or changed on the way, and why."""
    table = Table(title="warnings", header_style="bold yellow", title_justify="left")
    table.add_column("about")
    table.add_column("what")
    for warning in plan.warnings:
        table.add_row(escape(warning.subject), escape(warning.message))
    return table


def _action(status: ItemStatus) -> str:
    return {
        ItemStatus.CREATE: "[green]create[/]",
        ItemStatus.UNCHANGED: "already there",
        ItemStatus.EXISTING: "[yellow]exists (kept)[/]",
        ItemStatus.UPDATE: "[green]approve/enable[/]",
    }[status]
