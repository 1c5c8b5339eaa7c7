"""Credential redaction for URLs, used by logs, events, errors and process titles."""

from __future__ import annotations

import re

# scheme://userinfo@host...  The userinfo of a hand-written URL may itself hold
# '@', '/' or ':' (unescaped passwords), so take everything up to the *last* '@'
# before the next whitespace or quote as userinfo.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^\s'\"<>]*)@")


def redact_url(text: str) -> str:
    """Replace the password (and user) of every URL in ``text`` with ``***``."""

    def repl(m: re.Match[str]) -> str:
        return f"{m.group('scheme')}***@"

    return _USERINFO.sub(repl, text)
