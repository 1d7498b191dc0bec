"""The optional API key, checked the same way for HTTP headers and gRPC metadata."""

from __future__ import annotations

import hmac


def bearer_matches(authorization: str | bytes, api_key: bytes) -> bool:
    """Whether an `Authorization` value is `Bearer <api_key>` (constant-time comparison)."""
    value = authorization.encode() if isinstance(authorization, str) else authorization
    token = value[7:] if value[:7].lower() == b"bearer " else b""
    return hmac.compare_digest(token, api_key)
