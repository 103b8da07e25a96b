"""Session-ticket keys shared by every worker of a listener, rotated by the master.

The master sends each TLS listener's secrets, newest first (see portcullis.supervisor.tickets).
A worker derives the ticket keys from them with HKDF, bound to the listener's name and TLS
settings, so a ticket never resumes on another listener (which may require client certificates
the first did not) nor after its TLS settings change. The newest key encrypts new tickets, the
older ones still decrypt (and those tickets are renewed). OpenSSL calls back into Python for each
ticket: the key name picks the key, the HMAC key and AES-256-CBC key are set on the contexts it
hands over, exactly as its own built-in keys would be.

The callback is set on the listener's own context only: OpenSSL encrypts and decrypts tickets with
the context a connection started on, whichever certificate SNI then picks.
"""

from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from portcullis.tls.openssl import (
    PARAM_OCTET_STRING,
    PARAM_UTF8_STRING,
    LibSsl,
    OsslParam,
    TicketCallback,
    Unavailable,
    load,
)

if TYPE_CHECKING:
    import ssl

    from portcullis.config.schema import Listener

log = logging.getLogger("portcullis")

NAME_BYTES, MAC_KEY_BYTES, AES_KEY_BYTES, IV_BYTES = 16, 32, 32, 16
_DIGEST = b"SHA256"
# every callback ever handed to OpenSSL stays alive: a context may outlive the object that set it
_INSTALLED: list[TicketKeys] = []
_warned: list[str] = []


@dataclass(frozen=True, slots=True)
class _Key:
    name: bytes
    aes: bytes
    mac_params: ctypes.Array[OsslParam]
    buffers: tuple[ctypes.Array[ctypes.c_char], ...]
    """What `mac_params` points into, kept alive with it."""


def _key(secret: bytes, label: bytes) -> _Key:
    material = HKDF(hashes.SHA256(), NAME_BYTES + MAC_KEY_BYTES + AES_KEY_BYTES, None, label).derive(secret)
    name, mac, aes = material[:NAME_BYTES], material[NAME_BYTES:-AES_KEY_BYTES], material[-AES_KEY_BYTES:]
    mac_buf, digest_buf = ctypes.create_string_buffer(mac, len(mac)), ctypes.create_string_buffer(_DIGEST)
    params = (OsslParam * 3)(
        OsslParam(b"key", PARAM_OCTET_STRING, ctypes.addressof(mac_buf), len(mac), 0),
        OsslParam(b"digest", PARAM_UTF8_STRING, ctypes.addressof(digest_buf), len(_DIGEST), 0),
        OsslParam(None, 0, None, 0, 0),
    )
    return _Key(name, aes, params, (mac_buf, digest_buf))


def listener_label(listener: Listener) -> bytes:
    """What the keys are bound to: the listener's name and TLS settings."""
    tls = listener.tls.model_dump_json() if listener.tls is not None else ""
    return b"portcullis session tickets\0" + listener.name.encode() + b"\0" + tls.encode()


def binding() -> LibSsl | None:
    """The libssl binding, or None after saying once (per process) why shared tickets are off."""
    found = load()
    if isinstance(found, Unavailable):
        if not _warned:
            _warned.append(str(found))
            log.warning("session tickets stay per worker (shared ticket keys unavailable: %s)", found)
        return None
    return found


class TicketKeys:
    """The ticket keys of one listener in one worker; `update` swaps them in place."""

    def __init__(self, label: bytes, lib: LibSsl) -> None:
        self.label = label
        self.lib = lib
        self.keys: tuple[_Key, ...] = ()
        self.installed = False
        self.issued = self.resumed = self.renewed = self.unknown = 0
        self._callback = TicketCallback(self._on_ticket)
        self._secrets: tuple[bytes, ...] = ()

    def update(self, secrets: list[bytes]) -> None:
        """The listener's secrets, newest first; unchanged ones keep their derived keys."""
        if tuple(secrets) == self._secrets:
            return
        known = {s: k for s, k in zip(self._secrets, self.keys, strict=True)}
        self.keys = tuple(known.get(s) or _key(s, self.label) for s in secrets)
        self._secrets = tuple(secrets)

    def install(self, ctx: ssl.SSLContext) -> bool:
        """Hand the callback to OpenSSL for `ctx`; False (and OpenSSL's own keys) when it cannot be."""
        if not self.lib.set_ticket_callback(ctx, self._callback):
            log.warning("session tickets stay per worker: the SSL context could not be reached")
            return False
        _INSTALLED.append(self)
        self.installed = True
        return True

    def _arm(self, key: _Key, iv: int, cipher_ctx: int, mac_ctx: int, encrypt: bool) -> bool:
        """Set the key's HMAC and AES keys on the contexts OpenSSL handed over."""
        return self.lib.mac_params(mac_ctx, key.mac_params) and self.lib.cipher_init(cipher_ctx, key.aes, iv, encrypt)

    def _on_ticket(self, _ssl: int, key_name: int, iv: int, cipher_ctx: int, mac_ctx: int, enc: int) -> int:
        # OpenSSL's contract: encrypting, 1 = done, 0 = no ticket; decrypting, 0 = unknown key (full
        # handshake), 1 = done, 2 = done and send a fresh ticket. Never negative: that aborts the handshake.
        try:
            keys = self.keys
            if enc:
                if not keys:
                    return 0
                key = keys[0]
                ctypes.memmove(key_name, key.name, NAME_BYTES)
                ctypes.memmove(iv, os.urandom(IV_BYTES), IV_BYTES)
                if not self._arm(key, iv, cipher_ctx, mac_ctx, True):
                    return 0
                self.issued += 1
                return 1
            name = ctypes.string_at(key_name, NAME_BYTES)
            for index, key in enumerate(keys):
                if key.name == name:
                    if not self._arm(key, iv, cipher_ctx, mac_ctx, False):
                        return 0
                    if index:
                        self.renewed += 1
                        return 2
                    self.resumed += 1
                    return 1
            self.unknown += 1
            return 0
        except Exception:  # an exception must not cross into OpenSSL
            log.exception("session ticket callback failed")
            return 0


def decode_secrets(doc: object) -> dict[str, list[bytes]]:
    """The `tickets` of a control message: {listener: [hex secret, newest first]}."""
    out: dict[str, list[bytes]] = {}
    if isinstance(doc, dict):
        for name, secrets in doc.items():
            if isinstance(name, str) and isinstance(secrets, list):
                out[name] = [_unhex(s) for s in secrets if isinstance(s, str) and _unhex(s)]
    return out


def _unhex(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        return b""
