"""Pure authentication checks, no I/O: Origin allowlists and credentials (static and signed tokens).

See :mod:`wsgate.auth.origins` and :mod:`wsgate.auth.tokens`.
"""

from __future__ import annotations

from wsgate.auth.origins import OriginPattern, OriginPolicy, normalize_origin
from wsgate.auth.tokens import (
    Grant,
    PublishCredentials,
    StaticTokenLike,
    TokenVerifier,
    channel_matches,
    credential_from_headers,
    mint_token,
)

__all__ = [
    "Grant",
    "OriginPattern",
    "OriginPolicy",
    "PublishCredentials",
    "StaticTokenLike",
    "TokenVerifier",
    "channel_matches",
    "credential_from_headers",
    "mint_token",
    "normalize_origin",
]
