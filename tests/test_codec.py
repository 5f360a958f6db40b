"""The wire codec: round trips, zero-copy frames, and rejection of anything malformed."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import torch
import zmq

from tiller.protocol import REGISTRY, Decoder, Limits, ProtocolError, RouterEndpoint, encode
from tiller.protocol.codec import INLINE_LIMIT
from tiller.protocol.messages import JudgeFailed, Lease, LeaseRequest, Rollout, Scores, Shutdown, WeightsBucket

decoder = Decoder(REGISTRY)


def rollout(tokens: np.ndarray, lengths: np.ndarray) -> Rollout:
    return Rollout("actor-a", 7, 3, 1, 2, tokens, lengths, np.linspace(-3, 0, len(tokens), dtype=np.float32),
                   np.zeros(len(lengths), dtype=bool), 0.25)


def test_round_trip_keeps_every_field_and_sends_large_arrays_as_frames():
    tokens = np.arange(5000, dtype=np.int32)
    msg = rollout(tokens, np.array([2000, 3000], dtype=np.int32))
    frames = encode(msg)
    # body + response_tokens + logprobs; lengths (8 bytes) and truncated ride inline
    assert len(frames) == 3
    out = decoder.decode(frames)
    assert out.actor_id == "actor-a" and out.incarnation == 7 and out.generate_seconds == 0.25
    np.testing.assert_array_equal(out.response_tokens, tokens)
    np.testing.assert_array_equal(out.logprobs, msg.logprobs)
    assert out.response_tokens.dtype == np.int32 and out.truncated.dtype == np.bool_


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float32, np.uint8, np.bool_])
def test_dtypes_round_trip(dtype):
    array = (np.arange(300) % 2).astype(dtype)
    out = decoder.decode(encode(WeightsBucket(1, 0, 1, ["x"], [array], 1)))
    assert out.tensors[0].dtype == dtype
    np.testing.assert_array_equal(out.tensors[0], array)


def test_bfloat16_travels_as_raw_bytes_and_returns_as_torch():
    weight = torch.randn(64, 32).to(torch.bfloat16)
    frames = encode(WeightsBucket(3, 0, 1, ["w"], [weight], 1))
    assert len(frames) == 2 and memoryview(frames[1]).nbytes == 64 * 32 * 2
    out = decoder.decode(frames).tensors[0]
    assert out.dtype == torch.bfloat16 and torch.equal(out, weight)


def test_empty_and_non_contiguous_arrays():
    strided = np.arange(4000, dtype=np.int64).reshape(40, 100)[:, ::3]  # not contiguous
    assert not strided.flags["C_CONTIGUOUS"]
    empty = np.zeros((0, 5), dtype=np.float32)
    out = decoder.decode(encode(WeightsBucket(1, 0, 1, ["a", "b"], [strided, empty], 1)))
    np.testing.assert_array_equal(out.tensors[0], strided)
    assert out.tensors[1].shape == (0, 5)


def test_small_arrays_ride_inline_in_the_body():
    small = np.arange(INLINE_LIMIT // 8 - 1, dtype=np.int64)
    assert len(encode(WeightsBucket(1, 0, 1, ["s"], [small], 1))) == 1


def test_torch_float_tensor_round_trip():
    t = torch.randn(10, 20)
    out = decoder.decode(encode(WeightsBucket(1, 0, 1, ["t"], [t], 1))).tensors[0]
    np.testing.assert_array_equal(out, t.numpy())


def body(items) -> bytes:
    return msgpack.packb(items)


def frame_ref(dtype, shape, index) -> msgpack.ExtType:
    return msgpack.ExtType(1, msgpack.packb([dtype, shape, index]))


def scores_with_stats(stats) -> bytes:
    """A valid Scores body whose last field (the judge's counters) is replaced by `stats`."""
    valid = Scores("j", 1, 2, np.ones(2, np.float32), np.zeros(1, np.int32), np.zeros(1, np.int32),
                   np.ones(1, np.int32), np.zeros(0, np.int32), np.full(2, -1, np.int32), 0.1, {})
    items = msgpack.unpackb(encode(valid)[0])
    return msgpack.packb(items[:-1] + [stats])


MALFORMED = {
    "garbage": [b"\xc1\xff\x00garbage"],
    "not a list": [body({"kind": "shutdown"})],
    "unknown kind": [body(["launch_missiles", 1, "now"])],
    "wrong schema": [body(["shutdown", 99, "bye"])],
    "too few fields": [body(["lease_request", 1, "a", 1])],
    "wrong field type": [body(["lease_request", 1, "a", "one", 0])],
    "array where str expected": [body(["shutdown", 1, frame_ref("int32", [1], 1)]), b"\0" * 4],
    "dtype not allowed": [body(["weights_bucket", 2, 1, 0, 1, ["x"], [frame_ref("object", [1], 1)], 1, []]), b"\0" * 8],
    "shape does not match frame": [body(["weights_bucket", 2, 1, 0, 1, ["x"], [frame_ref("int32", [5], 1)], 1, []]), b"\0" * 8],
    "frame index missing": [body(["weights_bucket", 2, 1, 0, 1, ["x"], [frame_ref("int32", [1], 4)], 1, []])],
    "frame used twice": [body(["weights_bucket", 2, 1, 0, 1, ["x", "y"],
                               [frame_ref("int32", [1], 1), frame_ref("int32", [1], 1)], 1, []]), b"\0" * 4],
    "unreferenced extra frame": [body(["shutdown", 1, "bye"]), b"\0" * 1000],
    "unknown ext type": [body(["shutdown", 1, msgpack.ExtType(42, b"x")])],
    "negative dimension": [body(["weights_bucket", 2, 1, 0, 1, ["x"], [frame_ref("int32", [-1], 1)], 1, []]), b""],
    "map with a non-string key": [scores_with_stats({1: 2.0})],
    "map with a non-number value": [scores_with_stats({"ties": "many"})],
    "list where a map is expected": [scores_with_stats([1.0])],
}


REASONS = {
    "garbage": "msgpack", "not a list": "must be a list", "unknown kind": "unknown message kind",
    "wrong schema": "schema", "too few fields": "fields, expected", "wrong field type": "expected int",
    "array where str expected": "expected str", "dtype not allowed": "not allowed",
    "shape does not match frame": "needs 20 bytes", "frame index missing": "missing or already used",
    "frame used twice": "missing or already used", "unreferenced extra frame": "not referenced",
    "unknown ext type": "unknown ext type", "negative dimension": "bad array shape",
    "map with a non-string key": "msgpack", "map with a non-number value": "expected float",
    "list where a map is expected": "expected a mapping",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_messages_are_rejected_with_protocol_error(name):
    with pytest.raises(ProtocolError, match=REASONS[name]):
        decoder.decode(MALFORMED[name])


def test_size_limits_are_enforced():
    tight = Decoder(REGISTRY, Limits(max_frames=2, max_frame_bytes=1000))
    with pytest.raises(ProtocolError, match="frames"):
        tight.decode([b"x"] * 3)
    big = encode(WeightsBucket(1, 0, 1, ["x"], [np.zeros(1000, dtype=np.float32)], 1))
    with pytest.raises(ProtocolError, match="size limit"):
        tight.decode(big)


def test_router_keeps_serving_after_malformed_frames(free_address):
    """Garbage from the network is logged and counted; a good request after it still gets through."""
    server = RouterEndpoint(free_address)
    client = zmq.Context.instance().socket(zmq.DEALER)
    client.setsockopt(zmq.LINGER, 0)
    client.connect(free_address)
    try:
        for frames in MALFORMED.values():
            client.send_multipart(frames)
        client.send_multipart(encode(LeaseRequest("a", 1, 0)))
        good = []
        for _ in range(len(MALFORMED) + 1):
            assert server.poll(5000)
            received = server.recv()
            if received is not None:
                good.append(received)
        assert server.stats.rejected == len(MALFORMED)
        assert len(good) == 1 and good[0][1] == LeaseRequest("a", 1, 0)
        assert server.send(good[0][0], Shutdown("done"))
        assert client.poll(5000)
        assert decoder.decode(client.recv_multipart()) == Shutdown("done")
    finally:
        client.close()
        server.close()


def test_every_message_kind_round_trips():
    arr = np.arange(600, dtype=np.int32)
    samples = [
        Lease(1, 2, np.arange(3, dtype=np.int64), arr, np.array([200, 200, 200], np.int32), 4, 16, 1.0, 0.9, 5, 60.0, 7),
        Scores("j", 1, 2, np.ones(12, np.float32), np.arange(3, dtype=np.int32), np.zeros(3, np.int32),
               np.ones(3, np.int32), np.arange(5, dtype=np.int32), np.array([2, 3] + [-1] * 10, np.int32), 0.1,
               {"tasks": 3.0, "ties": 0.0}),
        rollout(arr, np.array([600], np.int32)),
        JudgeFailed("j", 1, 2, "RuntimeError: engine"),
    ]
    for msg in samples:
        out = decoder.decode(encode(msg))
        assert type(out) is type(msg)
        for name, value in vars(msg).items():
            np.testing.assert_array_equal(getattr(out, name), value)


# ----------------------------------------------------------------- property: nothing but ProtocolError

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

VALID_FRAMES = [
    [bytes(memoryview(f)) for f in encode(m)]
    for m in (
        LeaseRequest("a", 1, 0),
        Shutdown("bye"),
        rollout(np.arange(300, dtype=np.int32), np.array([100, 200], np.int32)),
        WeightsBucket(1, 0, 1, ["w"], [np.ones((20, 20), np.float32)], 1),
    )
]


@st.composite
def hostile_frames(draw):
    """Random frames, or a valid message with bytes overwritten, cut, or frames added/dropped."""
    if draw(st.booleans()):
        return draw(st.lists(st.binary(max_size=300), min_size=1, max_size=4))
    frames = list(draw(st.sampled_from(VALID_FRAMES)))
    index = draw(st.integers(0, len(frames) - 1))
    frame = bytearray(frames[index])
    for position, value in draw(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6)):
        if frame:
            frame[position % len(frame)] = value
    frames[index] = bytes(frame[: draw(st.integers(0, len(frame)))]) if draw(st.booleans()) else bytes(frame)
    extra = draw(st.lists(st.binary(max_size=64), max_size=2))
    return frames[: draw(st.integers(1, len(frames)))] + extra


@settings(max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(hostile_frames())
def test_decoding_hostile_frames_raises_only_protocol_error(frames):
    try:
        decoder.decode(frames)
    except ProtocolError:
        pass
