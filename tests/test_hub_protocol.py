"""The hub's message codec, fed untrusted input directly (no network)."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsgate.errors import ProtocolError
from wsgate.hub import protocol
from wsgate.hub.protocol import Publish, Since, Subscribe, Unsubscribe, decode_command


def test_subscribe_plain_and_with_since() -> None:
    assert decode_command(b'{"type":"subscribe","channel":"kiosks"}') == Subscribe("kiosks")
    assert decode_command('{"type":"subscribe","channel":"kiosk:7","since":{"epoch":"ab12","offset":5}}') == (
        Subscribe("kiosk:7", Since("ab12", 5))
    )


def test_unsubscribe_and_publish() -> None:
    assert decode_command('{"type":"unsubscribe","channel":"kiosks"}') == Unsubscribe("kiosks")
    command = decode_command('{"type":"publish","channel":"kiosks","data":{"action": "reset", "n": [1, 2]}}')
    assert command == Publish("kiosks", '{"action":"reset","n":[1,2]}')


def test_publish_data_may_be_any_json_value_including_null() -> None:
    assert decode_command('{"type":"publish","channel":"c","data":null}') == Publish("c", "null")
    assert decode_command('{"type":"publish","channel":"c","data":"ünï"}') == Publish("c", '"ünï"')


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'"subscribe"',
        b'{"type":"subscribe"}',
        b'{"type":"subscribe","channel":""}',
        b'{"type":"subscribe","channel":"a b"}',
        b'{"type":"subscribe","channel":"kiosk:*"}',
        b'{"type":"subscribe","channel":' + json.dumps("x" * 201).encode() + b"}",
        b'{"type":"subscribe","channel":7}',
        b'{"type":"subscribe","channel":"k","since":{"epoch":"e"}}',
        b'{"type":"subscribe","channel":"k","since":{"epoch":"e","offset":-1}}',
        b'{"type":"subscribe","channel":"k","since":{"epoch":"e","offset":true}}',
        b'{"type":"subscribe","channel":"k","since":{"epoch":"e","offset":1.5}}',
        b'{"type":"subscribe","channel":"k","since":{"epoch":"","offset":1}}',
        b'{"type":"subscribe","channel":"k","sinse":{"epoch":"e","offset":1}}',
        b'{"type":"publish","channel":"k"}',
        b'{"type":"publish","channel":"k","data":NaN}',
        b'{"type":"publish","channel":"k","data":Infinity}',
        b'{"type":"dance","channel":"k"}',
        b"[" * 100_000 + b"]" * 100_000,
    ],
)
def test_malformed_messages_are_bad_request(raw: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_command(raw)
    assert info.value.code == "bad_request"


@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_ever_raise_protocol_error(raw: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode_command(raw)


@given(st.text(max_size=300))
def test_arbitrary_text_only_ever_raise_protocol_error(raw: str) -> None:
    with contextlib.suppress(ProtocolError):
        decode_command(raw)


def test_decoding_is_the_same_fed_whole_or_as_a_reassembled_byte_sequence() -> None:
    raw = '{"type":"publish","channel":"kiosks","data":{"text":"Grüße"}}'.encode()
    assert decode_command(raw) == decode_command(b"".join(raw[i : i + 1] for i in range(len(raw))))


def test_encoders_produce_the_documented_json() -> None:
    assert json.loads(protocol.subscribed("kiosks", "e1", 4, True)) == {
        "type": "subscribed",
        "channel": "kiosks",
        "epoch": "e1",
        "offset": 4,
        "recovered": True,
    }
    assert json.loads(protocol.message("kiosks", 5, '{"action":"reset"}')) == {
        "type": "message",
        "channel": "kiosks",
        "offset": 5,
        "data": {"action": "reset"},
    }
    assert json.loads(protocol.error("forbidden", 'no "right"')) == {
        "type": "error",
        "code": "forbidden",
        "message": 'no "right"',
    }


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
        max_leaves=20,
    )
)
def test_published_data_round_trips_through_a_delivered_message(data: object) -> None:
    command = decode_command(json.dumps({"type": "publish", "channel": "c", "data": data}))
    assert isinstance(command, Publish)
    assert json.loads(protocol.message("c", 1, command.data))["data"] == data
