"""The private dovecot of tests/mailserver.py: ports, TLS, users, mail in and out, scale."""

from __future__ import annotations

import imaplib
import os
import poplib
import re
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.mailserver import Dovecot

pytestmark = pytest.mark.integration


def message(n: int, subject: str = "Order") -> bytes:
    """A small RFC 5322 message numbered `n`."""
    return (
        f"From: Dana Whitfield <dana@contoso.example>\r\n"
        f"To: Support <support@northwind.example>\r\n"
        f"Subject: {subject} {n}\r\n"
        f"Message-ID: <mailserver-{n}@contoso.example>\r\n"
        f"Date: Mon, 30 Mar 2026 10:15:00 +0000\r\n"
        f"\r\n"
        f"Body of message {n}.\r\n"
    ).encode()


def refuses(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:`port`."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def tls_context(server: Dovecot) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(server.ca_file))


def subjects(imap: imaplib.IMAP4, uids: str) -> list[bytes]:
    """The Subject header values of `uids` in the selected folder, in UID order."""
    status, data = imap.uid("FETCH", uids, "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert status == "OK"
    return [item[1].strip().removeprefix(b"Subject: ") for item in data if isinstance(item, tuple)]


def test_start_and_stop(tmp_path: Path) -> None:
    server = Dovecot(tmp_path / "mail")
    started = time.monotonic()
    server.start()
    took = time.monotonic() - started
    try:
        ports = [server.imap_port, server.imaps_port, server.pop3_port, server.pop3s_port]
        assert len(set(ports)) == 4 and all(ports)
        assert server.running
        assert "starting up for imap, pop3" in server.log_tail()
        assert server.ca_file.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
        with socket.create_connection((server.host, server.imap_port), timeout=5) as sock:
            assert sock.makefile("rb").readline().startswith(b"* OK")
        assert took < 10, f"start took {took:.1f}s"
    finally:
        server.stop()
    assert not server.running
    assert all(refuses(port) for port in ports)
    server.stop()  # idempotent


def test_start_failure_reports_the_log(tmp_path: Path) -> None:
    server = Dovecot(tmp_path / "mail")
    server.start()
    try:
        other = Dovecot(tmp_path / "other")
        other.imap_port, other.imaps_port = server.imap_port, server.imaps_port
        other.pop3_port, other.pop3s_port = server.pop3_port, server.pop3s_port
        with pytest.raises(RuntimeError, match="Address already in use"):
            other.start()
        assert not other.running
    finally:
        server.stop()


def test_imap_login_over_plaintext(dovecot: Dovecot) -> None:
    dovecot.add_user("dana", "s3cret")
    imap = dovecot.client("dana", "s3cret")
    try:
        assert imap.state == "AUTH"
        status, data = imap.select("INBOX")
        assert (status, data) == ("OK", [b"0"])
    finally:
        imap.logout()


def test_imaps_verifies_against_ca_file(dovecot: Dovecot) -> None:
    dovecot.add_user("dana", "s3cret")
    imap = imaplib.IMAP4_SSL("localhost", dovecot.imaps_port, ssl_context=tls_context(dovecot))
    try:
        assert isinstance(imap.sock, ssl.SSLSocket)
        peer = imap.sock.getpeercert()
        assert peer is not None
        names = peer["subjectAltName"]
        assert ("DNS", "localhost") in names and ("IP Address", "127.0.0.1") in names
        assert imap.login("dana", "s3cret")[0] == "OK"
    finally:
        imap.logout()
    # Without the CA file the self-signed certificate is refused.
    with pytest.raises(ssl.SSLCertVerificationError):
        imaplib.IMAP4_SSL("localhost", dovecot.imaps_port, ssl_context=ssl.create_default_context())


def test_starttls_on_the_plain_port(dovecot: Dovecot) -> None:
    dovecot.add_user("dana", "s3cret")
    imap = imaplib.IMAP4(dovecot.host, dovecot.imap_port)
    try:
        assert "STARTTLS" in imap.capabilities
        # imaplib checks the certificate against the host it dialled: the IP SAN.
        assert imap.starttls(ssl_context=tls_context(dovecot))[0] == "OK"
        assert isinstance(imap.sock, ssl.SSLSocket)
        assert imap.login("dana", "s3cret")[0] == "OK"
    finally:
        imap.logout()


def test_pop3_plain_and_tls(dovecot: Dovecot) -> None:
    dovecot.add_user("dana", "s3cret")
    dovecot.deliver_many("dana", "INBOX", [message(1), message(2)])

    plain = poplib.POP3(dovecot.host, dovecot.pop3_port, timeout=10)
    try:
        plain.user("dana")
        plain.pass_("s3cret")
        assert plain.stat()[0] == 2
        _, listing, _ = plain.uidl()
        plain_uidls = [line.split()[1] for line in listing]
        _, lines, _ = plain.top(2, 0)
        assert b"Subject: Order 2" in lines
        assert b"Body of message 2." not in lines
    finally:
        plain.quit()
    assert len(set(plain_uidls)) == 2

    secure = poplib.POP3_SSL("localhost", dovecot.pop3s_port, context=tls_context(dovecot))
    try:
        secure.user("dana")
        secure.pass_("s3cret")
        _, listing, _ = secure.uidl()
        assert [line.split()[1] for line in listing] == plain_uidls
        _, lines, _ = secure.top(1, 1)
        assert b"Subject: Order 1" in lines
        assert b"Body of message 1." in lines
    finally:
        secure.quit()


def test_append_returns_increasing_uids(dovecot: Dovecot) -> None:
    dovecot.add_user("dana", "s3cret")
    assert [dovecot.append("dana", "INBOX", message(n)) for n in range(3)] == [1, 2, 3]
    when = datetime(2026, 3, 30, 10, 15, tzinfo=UTC)
    uid = dovecot.append("dana", "Archive/2026", message(9), flags="\\Seen \\Flagged", date=when)
    assert uid == 1  # a new folder, created on the way
    assert dovecot.append("dana", "Archive/2026", message(10)) == 2

    imap = dovecot.client("dana", "s3cret")
    try:
        assert imap.select("Archive/2026")[1] == [b"2"]
        status, data = imap.uid("FETCH", "1", "(FLAGS INTERNALDATE)")
        assert status == "OK"
        assert isinstance(data[0], bytes)
        assert b"\\Seen" in data[0] and b"\\Flagged" in data[0]
        assert b'INTERNALDATE "30-Mar-2026 10:15:00 +0000"' in data[0]
    finally:
        imap.logout()


def test_deliver_many_then_select(dovecot: Dovecot) -> None:
    dovecot.add_user("dana", "s3cret")
    started = time.monotonic()
    delivered = dovecot.deliver_many("dana", "INBOX", (message(n) for n in range(2000)))
    took = time.monotonic() - started
    assert delivered == 2000
    assert took < 10, f"deliver_many took {took:.1f}s"
    if os.geteuid() == 0:
        owners = {path.stat().st_uid for path in (dovecot.maildir("dana") / "cur").iterdir()}
        assert owners == {dovecot.mail_uid}

    imap = dovecot.client("dana", "s3cret")
    try:
        status, data = imap.select("INBOX")
        assert (status, data) == ("OK", [b"2000"])
        # UIDs follow delivery order.
        assert subjects(imap, "1,1000,2000") == [b"Order 0", b"Order 999", b"Order 1999"]
        status, data = imap.uid("SEARCH", "UNSEEN")
        assert status == "OK" and isinstance(data[0], bytes) and len(data[0].split()) == 2000
    finally:
        imap.logout()


def test_deliver_many_and_append_share_a_non_ascii_folder(dovecot: Dovecot) -> None:
    dovecot.add_user("dana", "s3cret")
    assert dovecot.append("dana", "Entwürfe/2026", message(1)) == 1
    assert dovecot.deliver_many("dana", "Entwürfe/2026", [message(2), message(3)]) == 2
    assert dovecot.deliver_many("dana", "Later", [message(4)]) == 1

    imap = dovecot.client("dana", "s3cret")
    try:
        assert imap.select('"Entw&APw-rfe/2026"')[1] == [b"3"]
        assert subjects(imap, "1:*") == [b"Order 1", b"Order 2", b"Order 3"]
        status, data = imap.list()
        assert status == "OK"
        assert any(isinstance(line, bytes) and line.endswith(b'"/" Later') for line in data)
    finally:
        imap.logout()


def test_wrong_password_fails_quickly(dovecot: Dovecot) -> None:
    """dovecot's default is a 2 s delay per failure, growing with repeated failures from
    one IP; here each failure answers after ~0.5 s (2.3's auth process flushes delayed
    failures on a 500 ms timer: measured 0.50 s, with no growth)."""
    dovecot.add_user("dana", "s3cret")
    durations = []
    for _ in range(4):
        imap = imaplib.IMAP4(dovecot.host, dovecot.imap_port)
        started = time.monotonic()
        try:
            with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
                imap.login("dana", "wrong")
        finally:
            imap.shutdown()
        durations.append(time.monotonic() - started)
    assert max(durations) < 1.0, durations
    dovecot.client("dana", "s3cret").logout()


def test_users_change_without_restart(dovecot: Dovecot) -> None:
    dovecot.add_user("dana", "first")
    dovecot.client("dana", "first").logout()
    # A login just now made dovecot read a users file this second: new users and changed
    # passwords must still be visible at once.
    dovecot.add_user("erin", "other")
    dovecot.client("erin", "other").logout()
    dovecot.add_user("dana", "second")
    dovecot.client("dana", "second").logout()
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        dovecot.client("dana", "first")


def test_restart_keeps_ports_and_mail(dovecot: Dovecot) -> None:
    dovecot.add_user("dana", "s3cret")
    dovecot.append("dana", "INBOX", message(1))
    ports = (dovecot.imap_port, dovecot.imaps_port, dovecot.pop3_port, dovecot.pop3s_port)
    imap = dovecot.client("dana", "s3cret")
    imap.select("INBOX")

    dovecot.restart()

    assert (dovecot.imap_port, dovecot.imaps_port, dovecot.pop3_port, dovecot.pop3s_port) == ports
    with pytest.raises((imaplib.IMAP4.abort, OSError)):
        imap.noop()
    imap = dovecot.client("dana", "s3cret")
    try:
        assert imap.select("INBOX")[1] == [b"1"]
        assert subjects(imap, "1") == [b"Order 1"]
    finally:
        imap.logout()
    assert dovecot.append("dana", "INBOX", message(2)) == 2


def test_kill_connections(dovecot: Dovecot) -> None:
    dovecot.add_user("dana", "s3cret")
    sessions = [dovecot.client("dana", "s3cret") for _ in range(3)]
    pop3 = poplib.POP3(dovecot.host, dovecot.pop3_port, timeout=10)
    pop3.user("dana")
    pop3.pass_("s3cret")
    assert all(imap.noop()[0] == "OK" for imap in sessions)

    dovecot.kill_connections()

    for imap in sessions:
        with pytest.raises(imaplib.IMAP4.abort, match="Server shutting down"):
            imap.noop()
    with pytest.raises((poplib.error_proto, OSError)):
        pop3.noop()
    pop3.close()
    dovecot.client("dana", "s3cret").logout()  # new sessions are welcome
    dovecot.kill_connections()  # and with none left it is a no-op


def test_list_shows_special_use(dovecot: Dovecot) -> None:
    dovecot.add_user("dana", "s3cret")
    imap = dovecot.client("dana", "s3cret")
    try:
        status, data = imap.list()
        assert status == "OK"
        lines = [line for line in data if isinstance(line, bytes)]
        sent = [line for line in lines if line.endswith(b'"/" Sent')]
        assert len(sent) == 1 and b"\\Sent" in sent[0]
        status, data = imap.lsub()
        assert any(isinstance(line, bytes) and line.endswith(b"Sent") for line in data)
    finally:
        imap.logout()


def test_capabilities(dovecot: Dovecot) -> None:
    dovecot.add_user("dana", "s3cret")
    imap = dovecot.client("dana", "s3cret")
    try:
        status, data = imap.capability()
        assert status == "OK" and isinstance(data[0], bytes)
        capabilities = set(data[0].decode().split())
        assert {"IDLE", "CONDSTORE", "QRESYNC", "UIDPLUS", "SPECIAL-USE", "MOVE"} <= capabilities
    finally:
        imap.logout()


def test_idle_sees_new_mail_within_seconds(dovecot: Dovecot) -> None:
    dovecot.add_user("dana", "s3cret")
    imap = dovecot.client("dana", "s3cret")
    try:
        imap.select("INBOX")
        imap.send(b"I1 IDLE\r\n")
        assert imap.readline().startswith(b"+")
        started = time.monotonic()
        dovecot.deliver_many("dana", "INBOX", [message(1)])
        assert imap.sock is not None
        imap.sock.settimeout(5)
        line = imap.readline()
        took = time.monotonic() - started
        assert re.match(rb"\* 1 EXISTS", line), line
        assert took < 3, f"IDLE took {took:.1f}s to report new mail"
        imap.send(b"DONE\r\n")
        while not (line := imap.readline()).startswith(b"I1 "):
            pass
        assert line.startswith(b"I1 OK")
    finally:
        imap.logout()


def test_a_thousand_simultaneous_connections(tmp_path: Path) -> None:
    """1,000 users, each logged in on a connection of its own, all open at once.

    Measured on a 2-CPU machine: 0.7-1.1 s for the 1,000 add_user calls, 4.6-5.4 s for
    the 1,000 logins (32 client threads), 7-10 s for the whole test; ~1,010 dovecot
    processes, each imap process ~5 MB RSS (mostly shared)."""
    count = 1000
    with Dovecot(tmp_path / "mail", max_connections=1200) as server:
        for n in range(count):
            server.add_user(f"user{n}", f"pw{n}")

        def connect(n: int) -> imaplib.IMAP4:
            return server.client(f"user{n}", f"pw{n}")

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=32) as pool:
            clients = list(pool.map(connect, range(count)))
        took = time.monotonic() - started
        try:
            with ThreadPoolExecutor(max_workers=32) as pool:
                answers = list(pool.map(lambda imap: imap.noop()[0], clients))
            assert answers == ["OK"] * count
            print(f"{count} simultaneous IMAP logins in {took:.1f}s")
        finally:
            with ThreadPoolExecutor(max_workers=32) as pool:
                list(pool.map(lambda imap: imap.logout(), clients))
        assert "client_limit" not in server.log_tail(400)
        assert "process_limit" not in server.log_tail(400)
