"""A private dovecot (IMAP + POP3, plain and TLS) on loopback ports, for connector tests
and benchmarks.

    with Dovecot(tmp_path) as server:
        server.add_user("dana", "secret")
        uid = server.append("dana", "INBOX", b"Subject: hi\\r\\n\\r\\nbody\\r\\n")
        server.deliver_many("dana", "Archive", messages)   # fast: straight into the Maildir
        imap = server.client("dana", "secret")              # a logged-in stdlib imaplib client

Everything lives under `root`: the generated dovecot.conf, the self-signed certificate
(`ca_file`, SAN DNS:localhost and IP:127.0.0.1) and dovecot.log (the server's own log plus
its stdout/stderr; see `log_tail`). Running as root, dovecot's unprivileged processes (mail
as nobody, auth as dovecot) must be able to reach the mail, the users and the sockets; when
`root` sits below a directory they cannot traverse (pytest's /tmp/pytest-of-root is 0700),
that data goes to a private 0711 directory under the system temp dir instead, linked from
`root/data` and removed when this object is garbage-collected or the interpreter exits.

Facts about dovecot 2.3 this relies on:
- it will not run login processes as root: dovenull / dovecot / nobody are used;
- passwd-file re-reads a file at most once a second, so every user has a file of its own
  (`users/<name>`): a new user is visible at once, a changed password within a second;
- Maildir files named `<secs>.M<usecs>...` get UIDs in that order on the next sync, and
  `,S=<size>` spares dovecot a stat per message.
"""

from __future__ import annotations

import contextlib
import grp
import http.server
import imaplib
import json
import os
import pwd
import re
import resource
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse
import weakref
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Self

from connectors.imap_protocol import encode_mailbox
from schemas.mailbox import Protocol, ServerProfile, TransportSecurity

_SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/bin"])
_START_TIMEOUT = 20.0
_STOP_TIMEOUT = 10.0
_APPENDUID = re.compile(rb"\[APPENDUID (\d+) (\d+)\]")
_ATOM = re.compile(r"[A-Za-z0-9_./-]+")
_MAIL_PROCESS = re.compile(r"dovecot/(imap|pop3)(\s|$)")
# Longest socket path dovecot makes below base_dir ("token-login/imap-urlauth" and the
# like) plus slack, against the 107-byte limit of a unix socket path.
_SOCKET_SUFFIX = 32
_SUN_PATH_MAX = 107


def _binary(name: str) -> str:
    found = shutil.which(name, path=_SBIN_PATH)
    if found is None:
        raise RuntimeError(f"{name} not found: apt-get install dovecot-imapd dovecot-pop3d")
    return found


def quote_mailbox(name: str) -> str:
    """`name` as an IMAP mailbox argument for imaplib (modified UTF-7, quoted if needed)."""
    encoded = encode_mailbox(name)
    if _ATOM.fullmatch(encoded):
        return encoded
    return '"' + encoded.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _free_ports(count: int, host: str) -> list[int]:
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


# Private data directories made by this process, and how many Dovecot objects use each.
_shadow_users: dict[Path, int] = {}


def _release_shadow(shadow: Path) -> None:
    _shadow_users[shadow] -= 1
    if _shadow_users[shadow] <= 0:
        del _shadow_users[shadow]
        shutil.rmtree(shadow, ignore_errors=True)


def _traversable_by_others(path: Path) -> bool:
    """Whether every directory above `path` lets other users through (o+x)."""
    return all(os.stat(parent).st_mode & 0o001 for parent in path.parents)


def _group_members(pgid: int) -> list[str]:
    """The command lines of the live (not zombie) processes of a process group (Linux)."""
    members: list[str] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid or fields[0] in ("Z", "X"):
                continue
            members.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, IndexError, ValueError):
            continue
    return members


def _group_alive(pgid: int) -> bool:
    """Whether a process group still has a live (not zombie) member."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not Path("/proc/self/stat").exists():
        return True
    return bool(_group_members(pgid))


def _terminate_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop a dovecot master and every process of its group (it leads a session of its own).

    SIGTERM goes to the whole group at once: sent to the master alone, it waits about a
    second for its children; sent to all, they exit within ~0.1 s (imap processes close
    their sessions with "Server shutting down", as on a normal dovecot shutdown)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=_STOP_TIMEOUT)
    deadline = time.monotonic() + _STOP_TIMEOUT
    while _group_alive(proc.pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            return
        time.sleep(0.01)


def _command(config_file: Path) -> list[str]:
    """`dovecot -c CONFIG -F`, run with as many open files as the hard limit allows and, when
    started from the main thread, told to get SIGTERM if this interpreter dies first."""
    argv = [_binary("dovecot"), "-c", str(config_file), "-F"]
    setpriv = shutil.which("setpriv", path=_SBIN_PATH)
    if setpriv is not None and threading.current_thread() is threading.main_thread():
        # The parent-death signal fires when the thread that forked exits, hence main only.
        argv = [setpriv, "--pdeathsig", "TERM", "--", *argv]
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    prlimit = shutil.which("prlimit", path=_SBIN_PATH)
    if prlimit is not None and hard != resource.RLIM_INFINITY:
        argv = [prlimit, f"--nofile={hard}:{hard}", "--", *argv]
    return argv


class Dovecot:
    """A private dovecot on loopback ports, with its own config in `root`."""

    host: str = "127.0.0.1"

    def __init__(self, root: Path, *, max_connections: int = 200) -> None:
        """Prepare (but do not start) a server whose config, certificate and log live in
        `root`; `max_connections` sizes process and client limits for that many
        simultaneous IMAP (and as many POP3) sessions."""
        if max_connections < 1:
            raise ValueError("max_connections must be positive")
        self.root = Path(root).resolve()
        self.max_connections = max_connections
        self.imap_port = 0
        self.imaps_port = 0
        self.pop3_port = 0
        self.pop3s_port = 0
        self.config_file = self.root / "dovecot.conf"
        self.log_file = self.root / "dovecot.log"
        self.ca_file = self.root / "tls" / "cert.pem"
        self.key_file = self.root / "tls" / "key.pem"
        self._proc: subprocess.Popen[bytes] | None = None
        self._proc_finalizer: weakref.finalize[[subprocess.Popen[bytes]], Dovecot] | None = None
        self._lock = threading.Lock()
        self._tokens: dict[str, str] = {}
        self._introspection: _Introspection | None = None
        self._last_usecs = 0
        self._sequence = 0
        self._token = secrets.token_hex(4)
        self._greeting = f"tidings test dovecot {self._token} ready."

        self._as_root = os.geteuid() == 0
        if self._as_root:
            self._login_user = "dovenull"
            self._internal_user = "dovecot"
            self.mail_uid = pwd.getpwnam("nobody").pw_uid
            self.mail_gid = grp.getgrnam("nogroup").gr_gid
            self._internal_gid = pwd.getpwnam(self._internal_user).pw_gid
            self._internal_group = "dovecot"
        else:
            me = pwd.getpwuid(os.getuid())
            self._login_user = self._internal_user = me.pw_name
            self.mail_uid, self.mail_gid = os.getuid(), os.getgid()
            self._internal_gid = os.getgid()
            self._internal_group = grp.getgrgid(os.getgid()).gr_name

        self.root.mkdir(parents=True, exist_ok=True)
        self.data_dir = self._data_dir()
        self.base_dir = self.data_dir / "run"
        self.state_dir = self.data_dir / "state"
        self.mail_dir = self.data_dir / "mail"
        self.home_dir = self.data_dir / "home"
        self.users_dir = self.data_dir / "users"
        for path in (self.base_dir, self.state_dir):
            path.mkdir(mode=0o755, exist_ok=True)
        for path in (self.mail_dir, self.home_dir):
            path.mkdir(mode=0o711, exist_ok=True)
            self._chown_mail(path)
        self.users_dir.mkdir(mode=0o750, exist_ok=True)
        if self._as_root:
            os.chown(self.users_dir, 0, self._internal_gid)

    # --- lifecycle -------------------------------------------------------------------

    def _data_dir(self) -> Path:
        """Where mail, users and sockets go: `root/data`, or a private directory under the
        system temp dir when dovecot's unprivileged users could not reach `root/data`."""
        link = self.root / "data"
        if link.is_symlink() and link.resolve().is_dir():
            shadow = link.resolve()
            if shadow in _shadow_users:  # made by another Dovecot of this process
                _shadow_users[shadow] += 1
                weakref.finalize(self, _release_shadow, shadow)
            return shadow
        if link.is_dir():
            return link
        if link.is_symlink():  # left by an earlier run whose private directory is gone
            link.unlink()
        short = len(str(link / "run")) + _SOCKET_SUFFIX <= _SUN_PATH_MAX
        if not self._as_root and short:
            link.mkdir(mode=0o700)
            return link
        if self._as_root and short and _traversable_by_others(self.root):
            self.root.chmod(self.root.stat().st_mode | 0o011)
            link.mkdir(mode=0o711)
            return link
        shadow = Path(tempfile.mkdtemp(prefix="tidings-dovecot-"))
        shadow.chmod(0o711 if self._as_root else 0o700)
        link.symlink_to(shadow, target_is_directory=True)
        _shadow_users[shadow] = 1
        weakref.finalize(self, _release_shadow, shadow)
        return shadow

    @property
    def running(self) -> bool:
        """Whether the dovecot master process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Write the config (and the certificate, once), start `dovecot -F` as a child
        process and wait until all four ports take connections.

        Raises RuntimeError, with the tail of dovecot's log, if it does not come up."""
        if self.running:
            return
        self._make_certificate()
        if self._introspection is None:
            self._introspection = _Introspection(self.host, self._tokens)
        fresh_ports = self.imap_port == 0
        for attempt in range(3):
            if fresh_ports:
                ports = _free_ports(4, self.host)
                self.imap_port, self.imaps_port, self.pop3_port, self.pop3s_port = ports
            self.config_file.write_text(self._config())
            try:
                self._launch()
                return
            except RuntimeError as error:
                in_use = "Address already in use" in str(error)
                if not (fresh_ports and in_use and attempt < 2):
                    raise

    def _launch(self) -> None:
        started = time.monotonic()
        log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        with self.log_file.open("ab") as log:
            proc = subprocess.Popen(
                _command(self.config_file),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.root,
                start_new_session=True,
            )
        self._proc = proc
        self._proc_finalizer = weakref.finalize(self, _terminate_group, proc)
        try:
            self._wait_ready(started + _START_TIMEOUT)
        except RuntimeError as error:
            self.stop()
            new_log = self._read_log(log_offset)
            tail = "\n".join(new_log.splitlines()[-40:]) or "(empty)"
            raise RuntimeError(f"{error}\n--- dovecot.log ---\n{tail}") from None

    def _wait_ready(self, deadline: float) -> None:
        """Wait for each port to greet with this instance's greeting (over TLS verified
        against `ca_file` on the TLS ports): then the answer is from this server, not from
        another one that holds the port."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        for port, tls in (
            (self.imap_port, False),
            (self.pop3_port, False),
            (self.imaps_port, True),
            (self.pop3s_port, True),
        ):
            while not self._probe(port, context if tls else None):
                if self._proc is None or self._proc.poll() is not None:
                    raise RuntimeError("dovecot exited while starting")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"dovecot did not answer on port {port} in time")
                time.sleep(0.02)
        if self._proc is None or self._proc.poll() is not None:
            raise RuntimeError("dovecot exited while starting")

    def _probe(self, port: int, context: ssl.SSLContext | None) -> bool:
        try:
            with socket.create_connection((self.host, port), timeout=2) as raw:
                if context is None:
                    line = raw.makefile("rb").readline()
                else:
                    with context.wrap_socket(raw, server_hostname="localhost") as tls:
                        line = tls.makefile("rb").readline()
        except (OSError, ssl.SSLError):
            return False
        return self._greeting.encode() in line

    def stop(self) -> None:
        """Stop dovecot (SIGTERM, then wait for it and its children). Idempotent."""
        proc, self._proc = self._proc, None
        if self._proc_finalizer is not None:
            self._proc_finalizer.detach()
            self._proc_finalizer = None
        if proc is not None:
            _terminate_group(proc)

    def restart(self) -> None:
        """Stop and start again on the same ports, with the same mail and users."""
        self.stop()
        self.start()

    def kill_connections(self) -> None:
        """Disconnect every logged-in IMAP/POP3 session (`doveadm kick '*'`; clients see
        "* BYE Server shutting down.") and wait until their processes are gone. A session
        that logged in a moment ago may not be registered yet when the kick runs, so
        the kick is repeated while mail processes remain."""
        if self._proc is None or not self.running:
            return
        deadline = time.monotonic() + _STOP_TIMEOUT
        while time.monotonic() < deadline:
            self._kick()
            settle = time.monotonic() + 0.5
            while time.monotonic() < settle:
                mail = [c for c in _group_members(self._proc.pid) if _MAIL_PROCESS.match(c)]
                if not mail:
                    return
                time.sleep(0.01)
        raise RuntimeError(f"mail sessions still running after kicking for {_STOP_TIMEOUT}s")

    def _kick(self) -> None:
        result = subprocess.run(
            [_binary("doveadm"), "-c", str(self.config_file), "kick", "*"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode not in (0, 68):  # 68: "no users kicked"
            raise RuntimeError(f"doveadm kick failed: {result.stderr.strip() or result.stdout}")

    def __enter__(self) -> Self:
        """Start the server (see `start`)."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server (see `stop`) and its OAuth2 introspection endpoint."""
        self.stop()
        if self._introspection is not None:
            self._introspection.close()
            self._introspection = None

    def log_tail(self, lines: int = 40) -> str:
        """The last `lines` lines of dovecot.log (the server's log and its stdout/stderr)."""
        return "\n".join(self._read_log(0).splitlines()[-lines:])

    def _read_log(self, offset: int) -> str:
        try:
            with self.log_file.open("rb") as log:
                size = log.seek(0, os.SEEK_END)
                log.seek(max(offset, size - 256 * 1024))
                return log.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    # --- users and mail --------------------------------------------------------------

    def add_user(self, user: str, password: str) -> None:
        """Create the user (or change the password); takes effect without a restart."""
        if not user or user.startswith(".") or any(c in user for c in "/:\n\r\0 \t"):
            raise ValueError(f"unusable user name {user!r}")
        if any(c in password for c in ":\n\r\0"):
            raise ValueError("a password may not contain ':' or line breaks")
        path = self.users_dir / user
        previous = path.stat().st_mtime if path.exists() else None
        tmp = path.with_name(f".{user}.{self._token}.tmp")
        tmp.write_text(f"{user}:{{PLAIN}}{password}\n")
        tmp.chmod(0o640)
        if self._as_root:
            os.chown(tmp, 0, self._internal_gid)
        if previous is not None:
            # passwd-file reloads on a new mtime, and stats a file at most once a second.
            stamp = max(time.time(), previous + 1)
            os.utime(tmp, (stamp, stamp))
        tmp.replace(path)
        home = self.home_dir / user
        if not home.exists():
            home.mkdir(mode=0o700)
            self._chown_mail(home)
        if previous is not None:
            time.sleep(1.05 - time.time() % 1)

    def add_token(self, user: str, token: str) -> None:
        """Make `token` a valid OAuth2 bearer token of `user` (XOAUTH2, OAUTHBEARER):
        dovecot asks the fixture's introspection endpoint, which knows these tokens."""
        self._tokens[token] = user

    def password(self, user: str) -> str:
        """The password `add_user` stored for `user`."""
        try:
            line = (self.users_dir / user).read_text().split("\n", 1)[0]
        except FileNotFoundError:
            raise KeyError(f"no such user {user!r}: call add_user first") from None
        return line.split(":", 1)[1].removeprefix("{PLAIN}")

    def maildir(self, user: str) -> Path:
        """The user's Maildir root (INBOX; other folders are `.Name` below it)."""
        return self.mail_dir / user

    def folder_dir(self, user: str, folder: str) -> Path:
        """The Maildir of `folder` (Maildir++ layout: INBOX is the root, `a/b` is `.a.b`)."""
        if folder.upper() == "INBOX":
            return self.maildir(user)
        encoded = encode_mailbox(folder)
        if "." in encoded or encoded.startswith("/") or encoded.endswith("/"):
            raise ValueError(f"folder {folder!r} cannot be stored in a Maildir++ layout")
        return self.maildir(user) / ("." + encoded.replace("/", "."))

    def profile(
        self, protocol: Protocol = Protocol.IMAP, *, tls: bool = True, **changes: object
    ) -> ServerProfile:
        """A server profile for this server: TLS checked against `ca_file` (host
        localhost, as in the certificate), or plaintext loopback (allowed
        explicitly); `changes` override any other field."""
        imap = protocol == Protocol.IMAP
        secure_port = self.imaps_port if imap else self.pop3s_port
        plain_port = self.imap_port if imap else self.pop3_port
        settings: dict[str, object] = {
            "protocol": protocol,
            "host": "localhost" if tls else self.host,
            "port": secure_port if tls else plain_port,
            "security": TransportSecurity.TLS if tls else TransportSecurity.PLAIN,
            "allow_plaintext": not tls,
            "ca_file": str(self.ca_file),
        }
        settings.update(changes)
        return ServerProfile(**settings)  # type: ignore[arg-type]

    def client(self, user: str, password: str) -> imaplib.IMAP4:
        """A logged-in stdlib IMAP client on the plaintext port; the caller logs out."""
        imap = imaplib.IMAP4(self.host, self.imap_port, timeout=30)
        try:
            imap.login(user, password)
        except BaseException:
            with contextlib.suppress(OSError):
                imap.shutdown()
            raise
        return imap

    @contextlib.contextmanager
    def _session(self, user: str) -> Iterator[imaplib.IMAP4]:
        imap = self.client(user, self.password(user))
        try:
            yield imap
        finally:
            with contextlib.suppress(imaplib.IMAP4.error, OSError):
                imap.logout()

    def append(
        self,
        user: str,
        folder: str,
        raw: bytes,
        *,
        flags: str = "",
        date: datetime | None = None,
    ) -> int:
        """APPEND `raw` to `folder` over IMAP (creating the folder if missing) and return the
        new UID. `flags` like "\\\\Seen \\\\Flagged"; a naive `date` is taken as UTC."""
        mailbox = quote_mailbox(folder)
        when: datetime | None = None
        if date is not None:
            when = date if date.tzinfo is not None else date.replace(tzinfo=UTC)
        with self._session(user) as imap:
            if folder.upper() != "INBOX":
                imap.create(mailbox)  # NO [ALREADYEXISTS] when it is there already
            status, data = imap.append(mailbox, flags or None, when, raw)
        text = b" ".join(item for item in data if isinstance(item, bytes))
        if status != "OK":
            raise RuntimeError(f"APPEND to {folder!r} failed: {text!r}")
        found = _APPENDUID.search(text)
        if found is None:
            raise RuntimeError(f"APPEND to {folder!r} gave no APPENDUID: {text!r}")
        return int(found.group(2))

    def deliver_many(self, user: str, folder: str, messages: Iterable[bytes]) -> int:
        """Write messages straight into the folder's Maildir (cur/, no flags), in order:
        dovecot indexes them on the next access and gives them UIDs in this order.
        Creates the folder (unsubscribed) if missing. Returns how many were written."""
        target = self.folder_dir(user, folder)
        self._make_maildir(self.maildir(user), folder_marker=False)
        if target != self.maildir(user):
            self._make_maildir(target, folder_marker=True)
        tmp_dir = target / "tmp"
        cur_dir = target / "cur"
        chown = self._as_root
        uid, gid = self.mail_uid, self.mail_gid
        pid = os.getpid()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        count = 0
        with self._lock:
            usecs = max(time.time_ns() // 1000, self._last_usecs + 1)
            sequence = self._sequence
            try:
                for raw in messages:
                    secs, micros = divmod(usecs, 1_000_000)
                    base = f"{secs}.M{micros}P{pid}Q{sequence}R{self._token}.tidings"
                    name = f"{base},S={len(raw)}:2,"
                    tmp_path = f"{tmp_dir}/{name}"
                    fd = os.open(tmp_path, flags, 0o600)
                    try:
                        view = memoryview(raw)
                        while view:
                            view = view[os.write(fd, view) :]
                        if chown:
                            os.fchown(fd, uid, gid)
                    finally:
                        os.close(fd)
                    os.rename(tmp_path, f"{cur_dir}/{name}")
                    usecs += 1
                    sequence += 1
                    count += 1
            finally:
                self._last_usecs = usecs
                self._sequence = sequence
        return count

    def _make_maildir(self, path: Path, *, folder_marker: bool) -> None:
        if (path / "cur").is_dir():
            return
        for sub in (path, path / "cur", path / "new", path / "tmp"):
            sub.mkdir(mode=0o700, parents=sub == path, exist_ok=True)
            self._chown_mail(sub)
        if folder_marker:
            marker = path / "maildirfolder"
            marker.touch(mode=0o600)
            self._chown_mail(marker)

    def _chown_mail(self, path: Path) -> None:
        if self._as_root:
            os.chown(path, self.mail_uid, self.mail_gid)

    # --- configuration ---------------------------------------------------------------

    def _make_certificate(self) -> None:
        if self.ca_file.exists() and self.key_file.exists():
            return
        self.ca_file.parent.mkdir(mode=0o700, exist_ok=True)
        result = subprocess.run(
            [
                _binary("openssl"),
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "3650",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost,IP:127.0.0.1",
                "-keyout",
                str(self.key_file),
                "-out",
                str(self.ca_file),
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"openssl req failed: {result.stderr.strip()}")
        self.key_file.chmod(0o600)
        self.ca_file.chmod(0o644)

    def _oauth2_config(self) -> Path:
        """The oauth2 passdb's settings: tokens checked by the fixture's endpoint."""
        assert self._introspection is not None
        path = self.root / "oauth2.conf.ext"
        path.write_text(
            "introspection_mode = post\n"
            f"introspection_url = {self._introspection.url}\n"
            "force_introspection = yes\n"
            "username_attribute = username\n"
            "active_attribute = active\n"
            "active_value = true\n"
        )
        path.chmod(0o644)
        return path

    def _config(self) -> str:
        limit = self.max_connections
        cpus = os.cpu_count() or 1
        login_processes = max(4, cpus)
        no_chroot = "" if self._as_root else "  chroot =\n"

        def login_service(name: str, plain: int, tls: int) -> str:
            return (
                f"service {name}-login {{\n"
                f"  inet_listener {name} {{\n    port = {plain}\n  }}\n"
                f"  inet_listener {name}s {{\n    port = {tls}\n    ssl = yes\n  }}\n"
                "  service_count = 0\n"
                f"  process_min_avail = {min(cpus, login_processes)}\n"
                f"  process_limit = {login_processes}\n"
                f"  client_limit = {limit}\n"
                f"{no_chroot}"
                "}\n"
            )

        return (
            "# Generated by tests/mailserver.py; rewritten on every start.\n"
            f"base_dir = {self.base_dir}\n"
            f"state_dir = {self.state_dir}\n"
            "listen = 127.0.0.1\n"
            f"login_greeting = {self._greeting}\n"
            "protocols = imap pop3\n"
            f"log_path = {self.log_file}\n"
            f"info_log_path = {self.log_file}\n"
            f"debug_log_path = {self.log_file}\n"
            f"default_login_user = {self._login_user}\n"
            f"default_internal_user = {self._internal_user}\n"
            f"default_internal_group = {self._internal_group}\n"
            "first_valid_uid = 1\n"
            "first_valid_gid = 1\n"
            f"default_client_limit = {2 * limit + 100}\n"
            "ssl = yes\n"
            f"ssl_cert = <{self.ca_file}\n"
            f"ssl_key = <{self.key_file}\n"
            "auth_mechanisms = plain login xoauth2 oauthbearer\n"
            "disable_plaintext_auth = no\n"
            "auth_failure_delay = 0\n"
            "auth_verbose = yes\n"
            f"mail_location = maildir:{self.mail_dir}/%u\n"
            f"mail_uid = {self.mail_uid}\n"
            f"mail_gid = {self.mail_gid}\n"
            "mail_plugins =\n"
            "mailbox_idle_check_interval = 1 secs\n"
            "passdb {\n"
            "  driver = passwd-file\n"
            "  mechanisms = plain login\n"
            f"  args = scheme=PLAIN username_format=%u {self.users_dir}/%u\n"
            "}\n"
            "passdb {\n"
            "  driver = oauth2\n"
            "  mechanisms = xoauth2 oauthbearer\n"
            f"  args = {self._oauth2_config()}\n"
            "}\n"
            "userdb {\n"
            "  driver = static\n"
            f"  args = uid={self.mail_uid} gid={self.mail_gid} home={self.home_dir}/%u\n"
            "}\n"
            "namespace inbox {\n"
            "  inbox = yes\n"
            "  separator = /\n"
            "  mailbox Sent {\n    special_use = \\Sent\n    auto = subscribe\n  }\n"
            "  mailbox Drafts {\n    special_use = \\Drafts\n  }\n"
            "  mailbox Trash {\n    special_use = \\Trash\n  }\n"
            "}\n"
            f"protocol imap {{\n  mail_max_userip_connections = {limit}\n}}\n"
            f"protocol pop3 {{\n  mail_max_userip_connections = {limit}\n}}\n"
            + login_service("imap", self.imap_port, self.imaps_port)
            + login_service("pop3", self.pop3_port, self.pop3s_port)
            + f"service imap {{\n  process_limit = {limit}\n}}\n"
            f"service pop3 {{\n  process_limit = {limit}\n}}\n"
            "service anvil {\n"
            "  unix_listener anvil-auth-penalty {\n    mode = 0\n  }\n"
            f"{no_chroot}"
            "}\n"
            "service stats {\n"
            "  unix_listener stats-writer {\n    mode = 0666\n  }\n"
            "}\n"
        )


class _Introspection:
    """An OAuth2 token introspection endpoint (RFC 7662) on loopback, in a thread:
    POST token=... answers {"active": true, "username": ...} for known tokens."""

    def __init__(self, host: str, tokens: dict[str, str]) -> None:
        known = tokens

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = urllib.parse.parse_qs(self.rfile.read(length).decode("ascii", "replace"))
                token = (form.get("token") or [""])[0]
                user = known.get(token)
                answer = {"active": True, "username": user} if user else {"active": False}
                body = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self._server.server_address[1]}/introspect"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
