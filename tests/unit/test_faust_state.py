"""processors/faust_state.py: the key bytes the tables' stores and changelogs hold."""

from __future__ import annotations

from faust.serializers import codecs
from hypothesis import given
from hypothesis import strategies as st

from processors.faust_state import store_key


@given(st.text(alphabet=st.characters(exclude_categories=["Cs"])))
def test_store_keys_are_the_bytes_fausts_json_key_serializer_gives(key: str) -> None:
    assert store_key(key) == codecs.dumps("json", key)


def test_message_ids_and_member_keys_take_the_fast_path_unchanged() -> None:
    for key in ("m1@x.example", "m1@x.example#incoming", "12:m1@x.example|mb|INBOX|7"):
        assert store_key(key) == b'"' + key.encode() + b'"' == codecs.dumps("json", key)
    for key in ('quoted"local@x.example', "back\\slash@x.example", "tab\t@x.example", "é@x"):
        assert store_key(key) == codecs.dumps("json", key)
