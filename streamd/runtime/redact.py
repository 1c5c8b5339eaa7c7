"""Credential redaction for URLs, used by logs, events, errors and process titles."""

from __future__ import annotations

import re
import threading
from urllib.parse import parse_qsl, urlsplit

# scheme://userinfo@host...  The userinfo of a hand-written URL may itself hold
# '@', '/' or ':' (unescaped passwords), so take everything up to the *last* '@'
# before the next whitespace or quote as userinfo.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^\s'\"<>]*)@")
# Cameras take credentials in the query too (video.cgi?user=admin&pwd=...).
_SECRET_KEYS = (r"pass|passwd|password|pwd|pw|token|access_token|auth|key|api_?key|secret"
                r"|sig|signature|user|username|login|usr")  # fmt: skip
_QUERY = re.compile(rf"(?P<key>[?&;](?:{_SECRET_KEYS})=)[^&;#\s'\"<>]*", re.IGNORECASE)
# ... of which these are secret wherever their values appear (a user name is not: "admin"
# would be blanked in every message).
_QUERY_SECRET = re.compile(r"^(?:pass|passwd|password|pwd|pw|token|access_token|auth|key"
                           r"|api_?key|secret|sig|signature)$", re.IGNORECASE)  # fmt: skip
# Secrets of the configured URLs, replaced wherever they appear: a password holding a
# quote or a space ends the patterns above early ("rtsp://admin:it's@cam" in a message).
_known: set[str] = set()
_lock = threading.Lock()
_MIN_SECRET = 3  # shorter ones would blank ordinary words


def redact_url(text: str) -> str:
    """Replace the password (and user) of every URL in ``text``, credentials in its
    query, and every secret of a configured URL, with ``***``."""
    out = _QUERY.sub(lambda m: f"{m.group('key')}***", _USERINFO.sub(r"\g<scheme>***@", text))
    with _lock:
        known = sorted(_known, key=len, reverse=True)
    for secret in known:
        out = out.replace(secret, "***")
    return out


def redact_whole_url(url: str) -> str:
    """``url`` (all of it one URL, as configured) with everything before its last '@'
    and its query credentials as ``***``: exact where a password holds a quote or a
    space, which :func:`redact_url` on free text cannot tell from the text around."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return redact_url(f"{scheme}{sep}{rest}" if sep else url)


def register_secrets(url: str) -> None:
    """Remember ``url``'s password, user and query credentials, to be redacted wherever
    they are written (every process that opens or logs the URL calls this)."""
    found = set()
    _, sep, rest = url.partition("://")
    if sep and "@" in rest:
        userinfo = rest.rpartition("@")[0]
        if ":" in userinfo:  # a user alone ("admin") is not secret, and is an ordinary word
            found |= {userinfo, userinfo.partition(":")[2]}
    try:
        query = urlsplit(url).query
    except ValueError:
        query = ""
    found |= {v for k, v in parse_qsl(query, keep_blank_values=True) if _QUERY_SECRET.match(k)}
    with _lock:
        _known.update(s for s in found if len(s) >= _MIN_SECRET)
