"""Wire protocol: message types, the msgpack codec with zero-copy array frames, ZeroMQ endpoints."""

from tiller.protocol.codec import DEFAULT_LIMITS, Decoder, Limits, ProtocolError, encode
from tiller.protocol.messages import REGISTRY
from tiller.protocol.transport import LearnerClient, RouterEndpoint

__all__ = [
    "DEFAULT_LIMITS", "Decoder", "Limits", "ProtocolError", "encode", "REGISTRY",
    "LearnerClient", "RouterEndpoint",
]
