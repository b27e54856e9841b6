"""API keys: `Authorization: Bearer <key>`, compared in constant time against every configured key.

No key configured means an open server (the app logs a warning at start). Keys never reach logs or
metric labels.
"""

from __future__ import annotations

import hmac

from fastapi import Request

from chimera_serve.errors import AuthenticationError


def key_matches(presented: str, keys: tuple[str, ...]) -> bool:
    """True when `presented` equals one of `keys`; every key is compared, so timing reveals nothing."""
    found = False
    for k in keys:
        found |= hmac.compare_digest(presented.encode(), k.encode())
    return found


async def require_api_key(request: Request) -> None:
    """FastAPI dependency for the /v1 routes."""
    keys: tuple[str, ...] = request.app.state.settings.api_keys
    if not keys:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key_matches(token.strip(), keys):
        raise AuthenticationError("invalid or missing API key: send `Authorization: Bearer <key>`")
