"""SHA-256 and SHA-1 for metasup's own records, without `hashlib`.

`hashlib` loads the system OpenSSL, about 3.5 MiB resident for the supervisor's lifetime, to hash
a journal line or a config file now and then. CPython's built-in implementations do that as
well; `hashlib` remains the fallback where they are missing.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

Hasher = Callable[[bytes], Any]


def _builtin(*candidates: tuple[str, str]) -> Hasher:
    for module, name in candidates:
        try:
            found: Hasher = getattr(importlib.import_module(module), name)
            return found
        except (ImportError, AttributeError):
            continue
    import hashlib

    fallback: Hasher = getattr(hashlib, candidates[0][1])
    return fallback


_sha256 = _builtin(("_sha2", "sha256"), ("_sha256", "sha256"))
_sha1 = _builtin(("_sha1", "sha1"))


def sha256_hex(data: bytes) -> str:
    return str(_sha256(data).hexdigest())


def sha1_hex(data: bytes) -> str:
    return str(_sha1(data).hexdigest())


def hmac_sha256_hex(key: bytes, data: bytes) -> str:
    """HMAC-SHA256 (RFC 2104) on the built-in SHA-256: `hmac` would load OpenSSL."""
    block = 64
    if len(key) > block:
        key = _sha256(key).digest()
    key = key.ljust(block, b"\0")
    inner = _sha256(bytes(k ^ 0x36 for k in key) + data).digest()
    return str(_sha256(bytes(k ^ 0x5C for k in key) + inner).hexdigest())
