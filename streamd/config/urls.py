"""Stream URLs checked for their scheme's shape, so a typo is refused, not read as a file."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

NETWORK_SCHEMES = ("rtsp", "rtsps", "http", "https")
# "rtsp//cam/x": a scheme with its colon missing, which would otherwise be a relative path.
_NO_COLON = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)//")
# "rtsp:/cam/x", "http:cam": a network scheme whose "//" is short.
_SHORT_SLASHES = re.compile(rf"^(?P<scheme>{'|'.join(NETWORK_SCHEMES)}):(?!//)", re.IGNORECASE)


def url_problem(url: str) -> str | None:
    """Why ``url`` is malformed for its scheme, or None when it is well-formed."""
    m = _NO_COLON.match(url)
    if m:
        return f"malformed URL: no ':' after {m['scheme']!r} (did you mean {m['scheme']}://...?)"
    m = _SHORT_SLASHES.match(url)
    if m:
        return f"malformed URL: {m['scheme']} needs '//' after '{m['scheme']}:'"
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme and scheme != "file" and scheme not in NETWORK_SCHEMES:
        # Else read as a file path ("rtps:/cam/x"): 'no such file' would hide the typo.
        return (f"unsupported URL scheme {scheme!r}: streamd reads rtsp://, rtsps://, "
                "http://, https://, files (a path or file:) and webcams (/dev/videoN or "
                "an index)")  # fmt: skip
    if scheme in NETWORK_SCHEMES:
        return _network_problem(url, scheme)
    return None


def _network_problem(url: str, scheme: str) -> str | None:
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port  # .port raises for one out of range
    except ValueError as e:  # a bad port or IPv6 literal
        # Not urllib's words: they quote the URL's text, which may hold a secret.
        what = "port" if "port" in str(e).lower() else "host (IPv6 literal?)"
        return f"malformed URL: its {what} cannot be read"
    if not host:
        return f"malformed URL: {scheme}:// has no host"
    if any(c.isspace() or not c.isprintable() for c in host):
        return "malformed URL: its host has a space or a control character in it"
    if port == 0:
        return "malformed URL: port 0 is no camera's"
    return None
