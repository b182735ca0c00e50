"""Untrusted registration and heartbeat bodies: anything at all is either a valid message or MessageError."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from node.orchestration.tasks import TaskError, parse_task
from node.protocol.signing import SigningKey
from node.protocol.worker_messages import (
    Capacity,
    MessageError,
    make_heartbeat,
    make_registration,
    parse_signed_heartbeat,
    parse_signed_registration,
)

KEY = SigningKey(b"\x05" * 32)
GOOD = make_registration(KEY, Capacity(1 << 30, 100.0), "eu", "http://h:1", now=1_800_000_000).to_json()
BEAT = make_heartbeat(KEY, now=1_800_000_000).to_json()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


def replace_somewhere(message: dict, path: list[str], value) -> dict:
    data = {"message": dict(message["message"]), "signature": message["signature"]}
    data["message"]["capacity"] = dict(data["message"].get("capacity", {}))
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return data


PATHS = [["signature"], ["message", "address"], ["message", "region"], ["message", "stage_url"], ["message", "nonce"],
         ["message", "timestamp"], ["message", "kind"], ["message", "version"], ["message", "capacity"],
         ["message", "capacity", "memory_bytes"], ["message", "capacity", "layer_tokens_per_s"], ["message", "extra"]]


@settings(max_examples=100, deadline=None)
@given(json_values)
def test_any_json_is_refused_with_a_message_error(value):
    for parse in (parse_signed_registration, parse_signed_heartbeat):
        try:
            parse(value)
        except MessageError:
            pass


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(PATHS), json_values)
def test_a_valid_registration_with_one_field_replaced_is_refused_cleanly(path, value):
    try:
        parse_signed_registration(replace_somewhere(GOOD, path, value))
    except MessageError:
        return
    # the only way through is a value that leaves the signed message as it was
    assert path == ["message", "version"] and value == 1 or path[-1] == "stage_url" or path[-1] in ("memory_bytes", "layer_tokens_per_s")


@settings(max_examples=100, deadline=None)
@given(json_values)
def test_any_task_line_parses_or_says_why(value):
    try:
        parse_task(value, "line-1")
    except TaskError:
        pass
