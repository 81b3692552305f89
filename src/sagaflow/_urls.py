"""Masking credentials in connection URLs before they reach logs, reprs or errors."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

_PASSWORD_PARAM = re.compile(r"(password\s*=\s*)('[^']*'|[^\s&]+)", re.IGNORECASE)


def mask_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***`` (safe to log or show).

    Handles URLs (``postgresql://user:secret@host/db``, ``?password=secret``) and
    libpq keyword strings (``host=h password=secret``).
    """
    url = _PASSWORD_PARAM.sub(r"\1***", url)
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if parts.password is None:
        return url
    # Hosts and ports kept as written: parsing a bad port would raise.
    userinfo, _, hosts = parts.netloc.rpartition("@")
    netloc = f"{userinfo.partition(':')[0]}:***@{hosts}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
