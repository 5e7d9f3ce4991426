"""sha256 without hashlib's OpenSSL import (about 2 ms): the builtin module when present."""

from __future__ import annotations

try:
    from _sha256 import sha256
except ImportError:  # pragma: no cover - builds without the builtin module
    from hashlib import sha256

__all__ = ["sha256"]
