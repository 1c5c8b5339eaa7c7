"""``python -m streamd.probe /healthz``: a container or Kubernetes exec probe.

Off loopback every HTTP path needs ``http.token`` (the kubelet's httpGet probes
cannot take a header from a Secret), so the probe asks from inside the
container, on 127.0.0.1, with the token from the environment. Standard library
only: a probe every few seconds should not import the daemon.

Environment: ``STREAMD_HTTP_PORT`` (8090), ``STREAMD_HTTP_TOKEN`` (none).
Exit 0 on a 2xx answer, 1 otherwise, with one line saying why.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

TIMEOUT_S = 3.0


def probe(path: str, port: int, token: str | None) -> tuple[bool, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as r:
            return True, f"{path}: {r.status}"
    except urllib.error.HTTPError as e:
        return False, f"{path}: {e.code} {e.read(500).decode(errors='replace')}"
    except (urllib.error.URLError, OSError) as e:
        return False, f"{path}: no answer on 127.0.0.1:{port} ({e})"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    path = args[0] if args else "/healthz"
    port = int(os.environ.get("STREAMD_HTTP_PORT", "8090"))
    ok, line = probe(path, port, os.environ.get("STREAMD_HTTP_TOKEN") or None)
    print(line, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
