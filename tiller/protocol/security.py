"""CURVE encryption and authentication for the learner's socket, and the rule on where it may bind.

The learner binds to loopback unless told otherwise. Binding anywhere else needs CURVE keys
(`tiller keys`), or the loudly named `security.allow_insecure_network: true`. With CURVE on,
only workers whose public key file sits in `authorized_keys_dir` get in; every refusal is
logged on the learner's side and counted (the refused client itself hears nothing: that is
how ZeroMQ's CURVE handshake fails, so workers rely on their receive timeouts).
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from tiller.config import SecurityConfig

log = logging.getLogger(__name__)


class SecurityError(ValueError):
    pass


def is_loopback(address: str) -> bool:
    """True for ipc://, inproc:// and tcp:// addresses on 127.0.0.0/8, ::1 or localhost."""
    scheme, _, rest = address.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # an interface name, "*" or a hostname: reachable from outside


def check_bind(address: str, security: SecurityConfig) -> None:
    if is_loopback(address) or security.server_enabled:
        return
    if security.allow_insecure_network:
        log.warning("BINDING %s WITHOUT ENCRYPTION OR AUTHENTICATION (security.allow_insecure_network): "
                    "anyone who can reach this address can feed the learner", address)
        return
    raise SecurityError(
        f"learner.address {address} is not loopback and no CURVE keys are configured: make keys with "
        "`tiller keys DIR` and set security.server_secret_key and security.authorized_keys_dir "
        "(or, on a network you trust completely, security.allow_insecure_network: true)")


def create_keys(directory: str | Path, name: str) -> tuple[Path, Path]:
    """A CURVE key pair: NAME.key (public, to share) and NAME.key_secret (keep private)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(directory), name)
    return Path(public), Path(secret)


def _load(path: str, want_secret: bool) -> tuple[bytes, bytes | None]:
    if not Path(path).exists():
        raise SecurityError(f"key file {path} does not exist (make keys with `tiller keys`)")
    public, secret = zmq.auth.load_certificate(path)
    if want_secret and secret is None:
        raise SecurityError(f"{path} holds no secret key (use the .key_secret file)")
    return public, secret


class AuthorizedKeys:
    """The CURVE credentials callback: allows keys found in a directory, logs and counts the rest."""

    def __init__(self, directory: str | Path):
        if not Path(directory).is_dir():
            raise SecurityError(f"security.authorized_keys_dir {directory} is not a directory")
        self.allowed = set(zmq.auth.load_certificates(str(directory)))
        self.denied = 0

    def callback(self, domain: str, client_key: bytes) -> bool:
        if client_key in self.allowed:
            return True
        self.denied += 1
        log.warning("refused a CURVE client with an unknown key %s (%d refused so far)",
                    client_key.decode(errors="replace"), self.denied)
        return False


def secure_server(socket: zmq.Socket, context: zmq.Context, security: SecurityConfig) -> AuthorizedKeys:
    """Make `socket` a CURVE server that admits only authorized keys. Call before bind."""
    if not security.authorized_keys_dir:
        raise SecurityError("security.authorized_keys_dir is required with security.server_secret_key")
    keys = AuthorizedKeys(security.authorized_keys_dir)
    public, secret = _load(security.server_secret_key, want_secret=True)
    authenticator = ThreadAuthenticator(context)
    authenticator.start()
    authenticator.configure_curve_callback("*", credentials_provider=keys)
    socket.curve_secretkey, socket.curve_publickey, socket.curve_server = secret, public, True
    keys.authenticator = authenticator  # kept alive as long as the keys object
    return keys


def secure_client(socket: zmq.Socket, security: SecurityConfig) -> None:
    """Make `socket` a CURVE client of the learner. Call before connect."""
    if not security.server_public_key:
        raise SecurityError("security.server_public_key is required with security.client_secret_key")
    public, secret = _load(security.client_secret_key, want_secret=True)
    server_public, _ = _load(security.server_public_key, want_secret=False)
    socket.curve_secretkey, socket.curve_publickey, socket.curve_serverkey = secret, public, server_public
