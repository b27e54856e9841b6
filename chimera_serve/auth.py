"""API keys: `Authorization: Bearer <key>`, compared in constant time against every configured key.

No key configured means an open server (the app logs a warning at start). Keys never reach logs or metric
labels. The check runs in `middleware.Guard`, before the body is read.
"""

from __future__ import annotations

import hmac


def key_matches(presented: str, keys: tuple[str, ...]) -> bool:
    """True when `presented` equals one of `keys`; every key is compared, so timing reveals nothing."""
    found = False
    for k in keys:
        found |= hmac.compare_digest(presented.encode(), k.encode())
    return found


def bearer_matches(authorization: str, keys: tuple[str, ...]) -> bool:
    """True when an `Authorization` header value is `Bearer <one of keys>` (scheme case-insensitive)."""
    scheme, _, token = authorization.partition(" ")
    return scheme.lower() == "bearer" and key_matches(token.strip(), keys)
