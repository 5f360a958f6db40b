"""msgpack codec for wire messages: the body is msgpack, large arrays travel as their own frames.

A message encodes to a list of frames:

    frame 0   msgpack([kind, schema_version, field_0, field_1, ...])   # dataclass field order
    frame 1+  raw array buffers, sent with copy=False

A field appended as `optional(default)` is left off the body while it holds that default, and a body
that ends before fields with defaults decodes them to those defaults: such a field needs no new schema,
and a peer of the release before it still reads every message that leaves it at its default. (Fields
with plain defaults are always sent, as they were: a peer that expects them counts them.)

An array field is an msgpack ext value naming (dtype, shape, frame index); arrays under
`INLINE_LIMIT` bytes travel inline as (dtype, shape, bytes) to spare a frame. bfloat16
travels as its raw bytes with the dtype name "bfloat16" and comes back as a torch tensor
(numpy has no bf16); every other dtype comes back as a read-only numpy view of the frame.

Decoding trusts nothing: the kind must be registered, every field is type-checked against
the dataclass annotation, dtypes come from a whitelist (and, where a field is annotated
`Annotated[np.ndarray, Array(...)]`, from that field's kind and rank), float scalars must be
finite, and frame counts, sizes and shapes are bounded. (What array values mean, e.g. finite
log-probs, is the receiver's to check: it knows which lease to give back.)
Every check is written so that it cannot itself raise or overflow (sizes are Python integers,
dtypes are checked before any view), and `Decoder.decode` turns anything unforeseen into a
`ProtocolError` too: a hostile frame can only ever become a counted reject. Frames are only ever
read as msgpack and raw array bytes: nothing received is run, or names a module to load.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Sequence

import msgpack
import numpy as np

ARRAY_FRAME_EXT = 1  # ext payload: msgpack([dtype, shape, frame_index])
ARRAY_INLINE_EXT = 2  # ext payload: msgpack([dtype, shape, raw_bytes])
INLINE_LIMIT = 512  # bytes; smaller arrays ride inside the body

DTYPES = ("bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64", "bfloat16")
DTYPE_KINDS = {
    "bool": ("bool",),
    "int": ("uint8", "int8", "int16", "int32", "int64"),
    "float": ("float16", "float32", "float64", "bfloat16"),
    "any": DTYPES,
}
MAX_DIM = 1 << 40  # per dimension; the byte count is checked against the frame as well


@dataclass(frozen=True)
class Array:
    """What an array field may carry, as `Annotated[np.ndarray, Array("int", ndim=1)]` in a message:
    checked while decoding, before the bytes are viewed, so later code can trust dtype and rank."""

    kind: str = "any"  # a key of DTYPE_KINDS
    ndim: int | None = None


class ProtocolError(ValueError):
    """A message that does not decode: unknown kind, wrong field type, bad array, over a limit."""


@dataclass(frozen=True)
class Limits:
    """Bounds checked before and while decoding, so a hostile peer cannot exhaust memory."""

    max_frames: int = 4096
    max_body_bytes: int = 16 << 20
    max_frame_bytes: int = 2 << 30
    max_total_bytes: int = 4 << 30
    max_ndim: int = 8
    max_list_len: int = 1 << 20


DEFAULT_LIMITS = Limits()


_DTYPE_NAMES: dict[Any, str] = {}  # dtype object -> wire name: str(np.dtype) is slow Python code


def _dtype_name(array: Any) -> str:
    name = _DTYPE_NAMES.get(array.dtype)
    if name is None:
        name = str(array.dtype).removeprefix("torch.")
        if name in DTYPES:
            _DTYPE_NAMES[array.dtype] = name
    if name not in DTYPES:
        raise ProtocolError(f"dtype {name} is not allowed on the wire (allowed: {', '.join(DTYPES)})")
    return name


def _array_bytes(array: Any) -> memoryview:
    """A contiguous byte view of a numpy array or torch tensor (bf16 as a uint8 view)."""
    if isinstance(array, np.ndarray):
        return memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
    import torch  # only reached for torch tensors, so torch is already loaded

    tensor = array.detach().cpu().contiguous().reshape(-1)
    return memoryview(tensor.view(torch.uint8).numpy()).cast("B")


def _is_array(value: Any) -> bool:
    return isinstance(value, np.ndarray) or type(value).__name__ == "Tensor"


_OPTIONAL = "tiller.optional"  # dataclass field metadata: leave the field off the body at its default


def optional(default: bool | int | float | str) -> Any:
    """A message field appended after a release: `flag: bool = optional(False)`. At its default it is not
    sent, so peers of the release before it, which do not know it, still decode the message."""
    return dataclasses.field(default=default, metadata={_OPTIONAL: True})


def _at_default(value: Any, field: dataclasses.Field) -> bool:
    """An `optional` field holding exactly its default (a scalar: never true of arrays)."""
    default = field.default
    return bool(field.metadata.get(_OPTIONAL)) and type(value) is type(default) and value == default


def _required(fields: Sequence[dataclasses.Field]) -> int:
    """How many leading fields a body must carry: up to the last one without a default."""
    return max((i + 1 for i, f in enumerate(fields)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING), default=0)


class Encoder:
    """Encodes registered message dataclasses to frames; one instance per message."""

    def __init__(self) -> None:
        self.frames: list[Any] = [b""]
        self._inner = msgpack.Packer()  # one per message, not one per array (packb builds a Packer each call)

    def _default(self, value: Any) -> msgpack.ExtType:
        if not _is_array(value):
            raise ProtocolError(f"cannot encode value of type {type(value).__name__}")
        dtype, shape, data = _dtype_name(value), list(value.shape), _array_bytes(value)
        if data.nbytes < INLINE_LIMIT:
            return msgpack.ExtType(ARRAY_INLINE_EXT, self._inner.pack([dtype, shape, bytes(data)]))
        self.frames.append(data)
        return msgpack.ExtType(ARRAY_FRAME_EXT, self._inner.pack([dtype, shape, len(self.frames) - 1]))

    def encode(self, message: Any) -> list[Any]:
        kind = getattr(type(message), "KIND", None)
        if kind is None or not dataclasses.is_dataclass(message):
            raise ProtocolError(f"{type(message).__name__} is not a wire message")
        fields = dataclasses.fields(message)
        values = [getattr(message, f.name) for f in fields]
        while values and _at_default(values[-1], fields[len(values) - 1]):
            values.pop()  # an older peer, which lacks the field, decodes the message all the same
        self.frames[0] = msgpack.packb([kind, type(message).SCHEMA, *values], default=self._default)
        return self.frames


def encode(message: Any) -> list[Any]:
    """Frames for `message`: the msgpack body, then one buffer per large array (zero-copy)."""
    return Encoder().encode(message)


class _ArrayRef:
    """An array ext value seen in the body, resolved against the frames after unpacking."""

    __slots__ = ("dtype", "shape", "source")

    def __init__(self, dtype: str, shape: tuple[int, ...], source: int | bytes) -> None:
        self.dtype, self.shape, self.source = dtype, shape, source


def _ext_hook(limits: Limits):
    def hook(code: int, payload: bytes) -> _ArrayRef:
        if code not in (ARRAY_FRAME_EXT, ARRAY_INLINE_EXT):
            raise ProtocolError(f"unknown ext type {code}")
        try:
            dtype, shape, source = msgpack.unpackb(payload, raw=False)
        except Exception as exc:
            raise ProtocolError(f"bad array descriptor: {exc}") from None
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise ProtocolError(f"dtype {dtype!r} is not allowed on the wire")
        if not isinstance(shape, list) or len(shape) > limits.max_ndim:
            raise ProtocolError(f"array shape must be a list of at most {limits.max_ndim} dims")
        if not all(type(d) is int and 0 <= d < MAX_DIM for d in shape):
            raise ProtocolError(f"bad array shape {shape!r}")
        valid_source = isinstance(source, bytes) if code == ARRAY_INLINE_EXT else type(source) is int
        if not valid_source:
            raise ProtocolError("bad array source in descriptor")
        return _ArrayRef(dtype, tuple(shape), source)

    return hook


def _byte_count(dtype: str, shape: tuple[int, ...]) -> int:
    """Bytes an array of this dtype and shape needs, in Python integers (no int64 wrap-around)."""
    return math.prod(shape) * (2 if dtype == "bfloat16" else np.dtype(dtype).itemsize)


def _materialise(ref: _ArrayRef, frames: Sequence[Any], used: set[int], limits: Limits) -> Any:
    if isinstance(ref.source, bytes):
        buffer: Any = ref.source
    else:
        if not 1 <= ref.source < len(frames) or ref.source in used:
            raise ProtocolError(f"array names frame {ref.source}, which is missing or already used")
        used.add(ref.source)
        frame = frames[ref.source]
        buffer = frame.buffer if hasattr(frame, "buffer") else frame
    # An empty array may still declare huge dimensions, which numpy refuses to shape: bound the
    # product of the non-zero ones as well as the byte count.
    if math.prod(d for d in ref.shape if d) > limits.max_frame_bytes:
        raise ProtocolError(f"array shape {list(ref.shape)} is over the size limit")
    expected, actual = _byte_count(ref.dtype, ref.shape), memoryview(buffer).nbytes
    if actual != expected:
        raise ProtocolError(f"array {ref.dtype}{list(ref.shape)} needs {expected} bytes, frame has {actual}")
    if ref.dtype == "bfloat16":
        import torch

        if expected == 0:  # torch cannot view an empty byte tensor as bf16
            return torch.empty(ref.shape, dtype=torch.bfloat16)
        raw = np.frombuffer(buffer, dtype=np.uint8).copy()
        return torch.from_numpy(raw).view(torch.bfloat16).reshape(ref.shape)
    if ref.dtype == "bool":  # bytes other than 0/1 are not valid numpy bools: normalise them
        return np.frombuffer(buffer, dtype=np.uint8).reshape(ref.shape) != 0
    return np.frombuffer(buffer, dtype=ref.dtype).reshape(ref.shape)


def _check_array(ref: _ArrayRef, spec: Array, where: str) -> None:
    """The field's own rules, checked on the descriptor before any byte is looked at."""
    if ref.dtype not in DTYPE_KINDS[spec.kind]:
        raise ProtocolError(f"{where}: dtype {ref.dtype} is not allowed here (expected {spec.kind})")
    if spec.ndim is not None and len(ref.shape) != spec.ndim:
        raise ProtocolError(f"{where}: expected {spec.ndim} dimension(s), got shape {list(ref.shape)}")


def _check(value: Any, hint: Any, where: str, frames: Sequence[Any], used: set[int], limits: Limits) -> Any:
    """Type-check one decoded value against its annotation, resolving array refs."""
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        base, *extras = typing.get_args(hint)
        spec = next((e for e in extras if isinstance(e, Array)), Array())
        if base is not np.ndarray or not isinstance(value, _ArrayRef):
            return _check(value, base, where, frames, used, limits)
        _check_array(value, spec, where)
        return _materialise(value, frames, used, limits)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _check(value, option, where, frames, used, limits)
            except ProtocolError as exc:
                errors.append(str(exc))
        raise ProtocolError(errors[0] if errors else f"{where}: unexpected None")
    if origin is list:
        if not isinstance(value, list) or len(value) > limits.max_list_len:
            raise ProtocolError(f"{where}: expected a list of at most {limits.max_list_len} items")
        (item_hint,) = typing.get_args(hint)
        return [_check(v, item_hint, f"{where}[{i}]", frames, used, limits) for i, v in enumerate(value)]
    if origin is dict:  # small string-keyed maps (e.g. a worker's counters); msgpack caps them at 1024 keys
        key_hint, value_hint = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ProtocolError(f"{where}: expected a mapping, got {type(value).__name__}")
        return {_check(k, key_hint, f"{where} key", frames, used, limits):
                _check(v, value_hint, f"{where}[{str(k)[:40]!r}]", frames, used, limits) for k, v in value.items()}
    if hint is np.ndarray:
        if not isinstance(value, _ArrayRef):
            raise ProtocolError(f"{where}: expected an array, got {type(value).__name__}")
        return _materialise(value, frames, used, limits)
    if hint is float and type(value) is int:
        return float(value)
    if hint is float and type(value) is float and not math.isfinite(value):
        raise ProtocolError(f"{where}: {value} is not a finite number")
    if hint in (int, float, str, bool, bytes) and type(value) is hint:
        return value
    raise ProtocolError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {type(value).__name__}")


class Decoder:
    """Decodes frames into registered message dataclasses, validating everything."""

    def __init__(self, registry: dict[str, type], limits: Limits = DEFAULT_LIMITS) -> None:
        self.registry = registry
        self.limits = limits
        self._hints = {kind: typing.get_type_hints(cls, include_extras=True) for kind, cls in registry.items()}
        self._required = {kind: _required(dataclasses.fields(cls)) for kind, cls in registry.items()}

    def decode(self, frames: Sequence[Any]) -> Any:
        """The message in `frames`; anything wrong with them raises `ProtocolError`, nothing else."""
        try:
            return self._decode(frames)
        except ProtocolError:
            raise
        except Exception as exc:  # a case no check foresaw: still only a reject, never a crash
            raise ProtocolError(f"undecodable message: {type(exc).__name__}: {str(exc)[:200]}") from None

    def _decode(self, frames: Sequence[Any]) -> Any:
        limits = self.limits
        if not frames or len(frames) > limits.max_frames:
            raise ProtocolError(f"message has {len(frames)} frames (allowed 1..{limits.max_frames})")
        sizes = [memoryview(f.buffer if hasattr(f, "buffer") else f).nbytes for f in frames]
        if sizes[0] > limits.max_body_bytes or max(sizes) > limits.max_frame_bytes:
            raise ProtocolError("message body or frame is over the size limit")
        if sum(sizes) > limits.max_total_bytes:
            raise ProtocolError("message is over the total size limit")
        body = frames[0].bytes if hasattr(frames[0], "bytes") else bytes(frames[0])
        try:
            items = msgpack.unpackb(
                body, raw=False, strict_map_key=True, ext_hook=_ext_hook(limits),
                max_array_len=limits.max_list_len,
                max_map_len=1024, max_str_len=limits.max_body_bytes, max_bin_len=limits.max_body_bytes,
            )
        except ProtocolError:
            raise
        except Exception as exc:  # msgpack raises several types for garbage input
            raise ProtocolError(f"body is not valid msgpack: {type(exc).__name__}: {exc}") from None
        if not isinstance(items, list) or len(items) < 2:
            raise ProtocolError("body must be a list [kind, schema, fields...]")
        kind, schema, values = items[0], items[1], items[2:]
        cls = self.registry.get(kind) if isinstance(kind, str) else None
        if cls is None:
            raise ProtocolError(f"unknown message kind {kind!r}")
        if schema != cls.SCHEMA:
            raise ProtocolError(f"{kind}: schema {schema!r}, this process speaks {cls.SCHEMA}")
        fields = dataclasses.fields(cls)
        required = self._required[kind]
        if not required <= len(values) <= len(fields):
            expected = len(fields) if required == len(fields) else f"{required}..{len(fields)}"
            raise ProtocolError(f"{kind}: {len(values)} fields, expected {expected}")
        used: set[int] = set()
        hints = self._hints[kind]
        kwargs = {
            f.name: _check(v, hints[f.name], f"{kind}.{f.name}", frames, used, limits)
            for f, v in zip(fields, values)
        }  # fields past the body's end take their defaults
        if len(used) != len(frames) - 1:
            raise ProtocolError(f"{kind}: {len(frames) - 1 - len(used)} frames not referenced by any field")
        return cls(**kwargs)
