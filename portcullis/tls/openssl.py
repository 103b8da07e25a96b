"""The few libssl calls Python's `ssl` module does not offer, through ctypes: the session-ticket
key callback (OpenSSL 3's `SSL_CTX_set_tlsext_ticket_key_evp_cb`).

Nothing here is guessed at run time. The functions are looked up in the very libssl/libcrypto the
`_ssl` extension is linked with (`dlopen` of `_ssl` itself resolves its dependencies), and only on
an interpreter whose `PySSLContext` layout is known: CPython 3.8 to 3.13 (not free-threaded) keep
the `SSL_CTX *` as the first field after the object header. A probe context then proves the
pointer is the right one (its settings read back through libssl) before any real context is
touched. When any check fails, `load()` says why and returns None; callers keep OpenSSL's own
per-process ticket keys.
"""

from __future__ import annotations

import ctypes
import ssl
import sys
import sysconfig
from _ctypes import CFuncPtr
from dataclasses import dataclass
from functools import cache

# the OSSL_PARAM types (openssl/core.h) the ticket callback needs
PARAM_UTF8_STRING = 4
PARAM_OCTET_STRING = 5
_PYTHONS = ((3, 8), (3, 13))  # the range whose _ssl.c was read for the PySSLContext layout


class OsslParam(ctypes.Structure):
    """`OSSL_PARAM` (openssl/core.h): one named value handed to libcrypto."""

    _fields_ = [
        ("key", ctypes.c_char_p),
        ("data_type", ctypes.c_uint),
        ("data", ctypes.c_void_p),
        ("data_size", ctypes.c_size_t),
        ("return_size", ctypes.c_size_t),
    ]


# int cb(SSL *s, unsigned char key_name[16], unsigned char *iv, EVP_CIPHER_CTX *ctx, EVP_MAC_CTX *hctx, int enc)
TicketCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int
)
_P = ctypes.c_void_p
_SIGNATURES: dict[str, tuple[type | None, list[type]]] = {
    "OpenSSL_version_num": (ctypes.c_ulong, []),
    "SSL_CTX_get_options": (ctypes.c_uint64, [_P]),
    "SSL_CTX_get_num_tickets": (ctypes.c_size_t, [_P]),
    "SSL_CTX_set_tlsext_ticket_key_evp_cb": (ctypes.c_int, [_P, TicketCallback]),
    "EVP_aes_256_cbc": (_P, []),
    "EVP_EncryptInit_ex": (ctypes.c_int, [_P, _P, _P, ctypes.c_char_p, _P]),
    "EVP_DecryptInit_ex": (ctypes.c_int, [_P, _P, _P, ctypes.c_char_p, _P]),
    "EVP_MAC_CTX_set_params": (ctypes.c_int, [_P, ctypes.POINTER(OsslParam)]),
}


class Unavailable(Exception):
    """Why the ctypes route is not taken on this interpreter or library."""


@dataclass(frozen=True, slots=True)
class LibSsl:
    lib: ctypes.CDLL
    aes_256_cbc: int
    """`EVP_aes_256_cbc()`: the ticket cipher OpenSSL itself uses, a static object."""
    offset: int
    """Where a PySSLContext holds its `SSL_CTX *`."""

    def context_pointer(self, ctx: object) -> int | None:
        """The `SSL_CTX *` of `ctx`, or None when it does not read back as that context."""
        if not isinstance(ctx, ssl.SSLContext):
            return None
        pointer = ctypes.c_void_p.from_address(id(ctx) + self.offset).value
        if not pointer:
            return None
        same = self.lib.SSL_CTX_get_options(pointer) == int(ctx.options)
        same = same and self.lib.SSL_CTX_get_num_tickets(pointer) == ctx.num_tickets
        return pointer if same else None

    def set_ticket_callback(self, ctx: ssl.SSLContext, callback: CFuncPtr) -> bool:
        pointer = self.context_pointer(ctx)
        return pointer is not None and self.lib.SSL_CTX_set_tlsext_ticket_key_evp_cb(pointer, callback) == 1

    def mac_params(self, mac_ctx: int, params: ctypes.Array[OsslParam]) -> bool:
        return bool(self.lib.EVP_MAC_CTX_set_params(mac_ctx, params) == 1)

    def cipher_init(self, cipher_ctx: int, key: bytes, iv: int, encrypt: bool) -> bool:
        init = self.lib.EVP_EncryptInit_ex if encrypt else self.lib.EVP_DecryptInit_ex
        return bool(init(cipher_ctx, self.aes_256_cbc, None, key, iv) == 1)


def _check_interpreter() -> int:
    if sys.implementation.name != "cpython":
        raise Unavailable(f"{sys.implementation.name} is not CPython")
    if not _PYTHONS[0] <= sys.version_info[:2] <= _PYTHONS[1]:
        raise Unavailable(f"Python {sys.version_info[0]}.{sys.version_info[1]}: SSLContext layout not checked")
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        raise Unavailable("free-threaded build")
    import _ssl

    offset = object.__basicsize__  # sizeof(PyObject): the header the SSL_CTX * follows
    if _ssl._SSLContext.__basicsize__ < offset + ctypes.sizeof(ctypes.c_void_p):
        raise Unavailable("unexpected SSLContext size")
    if not ssl.OPENSSL_VERSION.startswith("OpenSSL ") or ssl.OPENSSL_VERSION_INFO < (3, 0):
        raise Unavailable(f"{ssl.OPENSSL_VERSION}: OpenSSL 3 is needed")
    return offset


def _open() -> LibSsl:
    offset = _check_interpreter()
    import _ssl

    path = getattr(_ssl, "__file__", None)
    if not path:
        raise Unavailable("_ssl is built into the interpreter")
    try:
        lib = ctypes.CDLL(path)
        for name, (restype, argtypes) in _SIGNATURES.items():
            func = getattr(lib, name)
            func.restype, func.argtypes = restype, argtypes
    except (OSError, AttributeError) as exc:
        raise Unavailable(f"libssl symbols not reachable through {path}: {exc}") from None
    if lib.OpenSSL_version_num() != ssl.OPENSSL_VERSION_NUMBER:
        raise Unavailable("the libssl found is not the one ssl reports")
    binding = LibSsl(lib, lib.EVP_aes_256_cbc(), offset)
    # a probe: two distinct settings made through Python must read back through the pointer
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for tickets in (5, 3):
        probe.num_tickets = tickets
        if binding.context_pointer(probe) is None:
            raise Unavailable("SSLContext layout does not match")
    if not binding.aes_256_cbc:
        raise Unavailable("no AES-256-CBC in libcrypto")
    return binding


@cache
def load() -> LibSsl | Unavailable:
    """The binding, or why there is none (checked once per process)."""
    try:
        return _open()
    except Unavailable as exc:
        return exc
