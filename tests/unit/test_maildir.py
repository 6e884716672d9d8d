"""connectors.maildir: listing folders, diffing against the cursor, cursor positions."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.maildir import (
    FolderChanges,
    MailboxMissingError,
    MaildirItem,
    changes_since,
    decode_position,
    encode_position,
    folder_dir,
    list_folder,
    modified_at,
    unique_name,
)
from schemas.mailbox import MaildirPosition


def make_folder(base: Path) -> Path:
    for sub in ("cur", "new", "tmp"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    return base


def deliver(base: Path, sub: str, filename: str, body: bytes = b"From: a@b.example\n\nx\n") -> Path:
    path = base / sub / filename
    path.write_bytes(body)
    return path


@pytest.fixture
def maildir(tmp_path: Path) -> Path:
    root = make_folder(tmp_path / "Maildir")
    deliver(root, "new", "1700000001.M1P1.host")
    deliver(root, "cur", "1700000002.M2P1.host:2,S")
    deliver(root, "cur", "1700000003.M3P1.host:2,FRS")
    deliver(root, "cur", "1700000004.M4P1.host:2,")
    deliver(root, "tmp", "1700000005.M5P1.host")  # being delivered: not an item yet
    deliver(root, "cur", ".hidden")
    deliver(root, "new", ".1700000006.M6P1.host")
    (root / "cur" / "a-directory").mkdir()
    (root / "dovecot-uidlist").write_text("3 V1 N5\n")
    sent = make_folder(root / ".Sent")
    deliver(sent, "cur", "1700000010.M10P1.host:2,S")
    return root


def test_list_inbox_reads_new_and_cur_with_flags(maildir: Path) -> None:
    items = list_folder(maildir, "INBOX")
    assert sorted(items) == [
        "1700000001.M1P1.host",
        "1700000002.M2P1.host",
        "1700000003.M3P1.host",
        "1700000004.M4P1.host",
    ]
    assert items["1700000001.M1P1.host"] == MaildirItem(
        "1700000001.M1P1.host", maildir / "new" / "1700000001.M1P1.host", ""
    )
    assert items["1700000002.M2P1.host"].flags == "S"
    assert items["1700000003.M3P1.host"].flags == "FRS"
    assert items["1700000004.M4P1.host"].flags == ""
    assert items["1700000003.M3P1.host"].path == maildir / "cur" / "1700000003.M3P1.host:2,FRS"
    assert items["1700000003.M3P1.host"].path.read_bytes().startswith(b"From:")


def test_list_ignores_tmp_dotfiles_and_directories(maildir: Path) -> None:
    names = set(list_folder(maildir, "INBOX"))
    assert "1700000005.M5P1.host" not in names
    assert ".hidden" not in names
    assert not any(name.startswith(".") for name in names)
    assert "a-directory" not in names
    assert "1700000010.M10P1.host" not in names  # the Sent sub-folder is not INBOX


@pytest.mark.parametrize("inbox", ["INBOX", "inbox", "Inbox"])
def test_inbox_is_the_root_in_any_case(maildir: Path, inbox: str) -> None:
    assert folder_dir(maildir, inbox) == maildir
    assert len(list_folder(maildir, inbox)) == 4


def test_sub_folder_is_a_dot_directory(maildir: Path) -> None:
    assert folder_dir(maildir, "Sent") == maildir / ".Sent"
    assert folder_dir(maildir, "Sent Items") == maildir / ".Sent Items"
    items = list_folder(maildir, "Sent")
    assert list(items) == ["1700000010.M10P1.host"]
    assert items["1700000010.M10P1.host"].flags == "S"


def test_missing_sub_folder_is_empty(maildir: Path) -> None:
    assert list_folder(maildir, "Archive") == {}


def test_sub_folder_with_only_cur_is_read(maildir: Path) -> None:
    (maildir / ".Drafts" / "cur").mkdir(parents=True)
    deliver(maildir / ".Drafts", "cur", "1.M1.host:2,D")
    assert list(list_folder(maildir, "Drafts")) == ["1.M1.host"]


def test_missing_root_raises_mailbox_missing(tmp_path: Path) -> None:
    with pytest.raises(MailboxMissingError):
        list_folder(tmp_path / "nowhere", "INBOX")


def test_root_that_is_not_a_maildir_raises_mailbox_missing(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    with pytest.raises(MailboxMissingError) as caught:
        list_folder(tmp_path / "plain", "Sent")
    assert isinstance(caught.value, OSError)
    assert str(tmp_path / "plain") in str(caught.value)


def test_root_with_only_new_is_a_maildir(tmp_path: Path) -> None:
    (tmp_path / "m" / "new").mkdir(parents=True)
    deliver(tmp_path / "m", "new", "1.M1.host")
    assert list(list_folder(tmp_path / "m", "INBOX")) == ["1.M1.host"]


def test_moving_from_new_to_cur_keeps_the_identity(maildir: Path) -> None:
    before = list_folder(maildir, "INBOX")
    (maildir / "new" / "1700000001.M1P1.host").rename(maildir / "cur" / "1700000001.M1P1.host:2,S")
    after = list_folder(maildir, "INBOX")
    assert set(after) == set(before)
    assert after["1700000001.M1P1.host"].flags == "S"
    assert changes_since(set(before), after) == FolderChanges(created=[], deleted=[])


def test_listing_does_not_change_the_mailbox(maildir: Path) -> None:
    snapshot = sorted(str(p.relative_to(maildir)) for p in maildir.rglob("*"))
    list_folder(maildir, "INBOX")
    list_folder(maildir, "Sent")
    assert sorted(str(p.relative_to(maildir)) for p in maildir.rglob("*")) == snapshot


# -- changes_since --------------------------------------------------------------


def items(*names: str) -> dict[str, MaildirItem]:
    return {name: MaildirItem(name, Path("/m/cur") / name, "") for name in names}


def test_changes_since_reports_created_and_deleted_sorted() -> None:
    changes = changes_since({"b", "c", "x"}, items("d", "a", "b", "c"))
    assert changes == FolderChanges(created=["a", "d"], deleted=["x"])


def test_changes_since_nothing_changed() -> None:
    assert changes_since({"a", "b"}, items("a", "b")) == FolderChanges([], [])


def test_changes_since_empty_cursor_creates_everything() -> None:
    assert changes_since(set(), items("b", "a")) == FolderChanges(["a", "b"], [])


def test_changes_since_empty_folder_deletes_everything() -> None:
    assert changes_since({"b", "a"}, {}) == FolderChanges([], ["a", "b"])


def test_changes_since_over_a_real_folder(maildir: Path) -> None:
    seen = set(list_folder(maildir, "INBOX"))
    (maildir / "cur" / "1700000002.M2P1.host:2,S").unlink()
    deliver(maildir, "new", "1700000099.M9P1.host")
    changes = changes_since(seen, list_folder(maildir, "INBOX"))
    assert changes == FolderChanges(["1700000099.M9P1.host"], ["1700000002.M2P1.host"])


# -- positions ------------------------------------------------------------------


def test_encode_position_is_sorted_newline_joined_zlib() -> None:
    position = encode_position({"b", "a", "c"})
    assert position.count == 3
    assert zlib.decompress(position.names_z) == b"a\nb\nc"
    assert decode_position(position) == {"a", "b", "c"}


def test_empty_position_round_trips() -> None:
    position = encode_position(set())
    assert position.count == 0
    assert decode_position(position) == set()
    assert decode_position(MaildirPosition(names_z=b"", count=0)) == set()


def test_position_is_deterministic() -> None:
    assert encode_position({"x", "y"}) == encode_position({"y", "x"})


def test_position_with_undecodable_file_name_bytes_round_trips() -> None:
    # os.scandir gives undecodable bytes as surrogate escapes.
    names = {b"17.M1.host\xff".decode("utf-8", "surrogateescape"), "ascii"}
    assert decode_position(encode_position(names)) == names


UNIQUE_NAMES = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\n:/\x00"),
    min_size=1,
    max_size=40,
)


@given(st.sets(UNIQUE_NAMES, max_size=50))
def test_position_round_trips(names: set[str]) -> None:
    position = encode_position(names)
    assert position.count == len(names)
    assert decode_position(position) == names


@given(st.sets(UNIQUE_NAMES, max_size=20), st.sets(UNIQUE_NAMES, max_size=20))
def test_decoded_position_diffs_like_the_original_set(seen: set[str], now: set[str]) -> None:
    current = items(*now)
    assert changes_since(decode_position(encode_position(seen)), current) == changes_since(
        seen, current
    )


# -- unique_name, modified_at ---------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("1700000002.M2P1.host:2,S", "1700000002.M2P1.host"),
        ("1700000002.M2P1.host:2,", "1700000002.M2P1.host"),
        ("1700000002.M2P1.host", "1700000002.M2P1.host"),
        ("1700000002.M2P1.host:1,experimental", "1700000002.M2P1.host"),
        ("a:b:c", "a"),
    ],
)
def test_unique_name(filename: str, expected: str) -> None:
    assert unique_name(filename) == expected


@given(UNIQUE_NAMES, st.text(alphabet="DFPRST", max_size=6))
def test_unique_name_ignores_flags(name: str, flags: str) -> None:
    assert unique_name(f"{name}:2,{flags}") == name
    assert unique_name(name) == name


def test_modified_at(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("x")
    when = modified_at(path)
    assert when is not None and when.tzinfo is not None
    assert modified_at(tmp_path / "gone") is None
