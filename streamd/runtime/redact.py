"""Credential redaction for URLs, used by logs, events, errors and process titles."""

from __future__ import annotations

import re
import threading
from urllib.parse import parse_qsl, urlsplit

# scheme://userinfo@host...  The userinfo of a hand-written URL may itself hold
# '@', '/' or ':' (unescaped passwords), so take everything up to the *last* '@'
# before the next whitespace or quote as userinfo.
# A scheme starts where a run of scheme characters starts: tried from inside a long run
# too, the pattern took 0.3 s on 20 KB of letters.
_USERINFO = re.compile(
    r"(?<![A-Za-z0-9+.-])(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^\s'\"<>]*)@"
)
# Cameras take credentials in the query too (video.cgi?user=admin&pwd=..., presigned
# X-Amz-Signature=..., client_secret=...): a key holding any of these words.
_SECRET_WORDS = r"pass|pwd|pw|token|secret|key|sig|auth|cred|user|usr|login"
_SECRET_KEY = re.compile(_SECRET_WORDS, re.IGNORECASE)
# Every key=value pair, matched in one pass without backtracking (the key holds no
# delimiter); whether its key names a secret is decided per match. A pattern with the
# secret words inside the key took 3 s on 5 KB of "?pass?pass..." (any logged text).
_QUERY = re.compile(r"(?P<key>[?&;](?P<name>[^=?&;#\s'\"<>]*)=)(?P<value>[^&;#\s'\"<>]*)")
# A configured URL's secret that the patterns above cannot delimit (it holds a quote, a
# space or '<', '>'): redacted wherever it appears. Only those: a plain one is found by
# the patterns, and a short one ("1234", "admin") would blank ordinary text.
_UNDELIMITED = re.compile(r"[\s'\"<>]")
_MAX_KNOWN, _MAX_SECRET = 256, 256  # bounded: the stream API may register them
_known: tuple[str, ...] = ()  # longest first
_lock = threading.Lock()


def redact_url(text: str) -> str:
    """Replace the password (and user) of every URL in ``text``, credentials in its
    query, and every undelimited secret of a configured URL, with ``***``."""
    out = _QUERY.sub(_hide_secret_value, _USERINFO.sub(r"\g<scheme>***@", text))
    for secret in _known:
        out = out.replace(secret, "***")
    return out


def _hide_secret_value(m: re.Match[str]) -> str:
    return f"{m['key']}***" if _SECRET_KEY.search(m["name"]) else m[0]


def redact_whole_url(url: str) -> str:
    """``url`` (all of it one URL, as configured) with everything before its last '@'
    and its query credentials as ``***``: exact where a password holds a quote or a
    space, which :func:`redact_url` on free text cannot tell from the text around."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    whole = f"{scheme}{sep}{rest}" if sep else url
    base, q, query = whole.partition("?")
    if not q:
        return redact_url(whole)
    parts = re.split(r"([&;])", query)  # pairs, with their separators between
    for i in range(0, len(parts), 2):
        k, eq, _ = parts[i].partition("=")
        if eq and _SECRET_KEY.search(k):
            parts[i] = f"{k}=***"
    return redact_url(base) + "?" + "".join(parts)


def register_secrets(url: str) -> None:
    """Remember ``url``'s password and query credentials that the patterns cannot
    delimit, to be redacted wherever they are written (each process that loads, accepts
    or opens the URL calls this, once it is valid)."""
    found = set()
    _, sep, rest = url.partition("://")
    if sep and "@" in rest:
        userinfo = rest.rpartition("@")[0]
        if ":" in userinfo:  # a user alone ("admin") is not secret
            found |= {userinfo, userinfo.partition(":")[2]}
    try:
        query = urlsplit(url).query
    except ValueError:
        query = ""
    found |= {v for k, v in parse_qsl(query, keep_blank_values=True)
              if _SECRET_KEY.search(k)}  # fmt: skip
    new = {s for s in found if _UNDELIMITED.search(s) and len(s) <= _MAX_SECRET}
    global _known
    with _lock:
        if new - set(_known) and len(_known) < _MAX_KNOWN:
            _known = tuple(sorted({*_known, *new}, key=len, reverse=True)[:_MAX_KNOWN])
