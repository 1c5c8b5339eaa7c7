"""The live view's two HTML pages: every stream at a glance, and one stream."""

from __future__ import annotations

import html
from typing import Any
from urllib.parse import quote

_STYLE = """
body { font: 14px system-ui, sans-serif; margin: 16px; background: #111; color: #eee; }
a { color: #8cf; } table { border-collapse: collapse; }
td, th { padding: 4px 10px; text-align: left; border-bottom: 1px solid #333; }
img.thumb { width: 240px; display: block; background: #222; }
img.live { max-width: 100%; display: block; background: #222; }
div.down { width: 240px; height: 135px; display: flex; align-items: center;
  justify-content: center; text-align: center; background: #311; color: #f99; }
td.problem { color: #f99; }
"""

_REFRESH = """
<script>
// Thumbnails: a fresh annotated JPEG every 2 s while this page is open, swapped in only
// once it loaded: a refused one (503: too many waiting at once) keeps the last picture.
setInterval(() => document.querySelectorAll("img.thumb").forEach(img => {
  const u = new URL(img.src); u.searchParams.set("t", Date.now());
  const next = new Image(); next.className = "thumb"; next.alt = img.alt;
  next.onload = () => img.replaceWith(next); next.src = u;
}), 2000);
// A camera that is down has a placeholder, not a thumbnail: reload to see it come back.
if (document.querySelector("div.down")) setTimeout(() => location.reload(), 5000);
</script>
"""


def _q(token: str | None) -> str:
    return "" if token is None else f"?token={quote(token)}"


def index(status: dict[str, Any], token: str | None) -> str:
    rows = []
    for sid, s in status["streams"].items():
        link = f"/streams/{quote(sid)}{_q(token)}"
        thumb = f"/streams/{quote(sid)}.jpg{_q(token)}"
        latency = s.get("latency_ms")
        problem = s.get("problem")
        # A down camera has no fresh frame: a broken image would only say "something".
        picture = (
            f"<img class='thumb' src='{thumb}' alt=''>"
            if problem is None
            else f"<div class='down'>no picture: {html.escape(str(s.get('state') or '-'))}</div>"
        )
        rows.append(
            f"<tr><td><a href='{link}'>{picture}</a></td>"
            f"<td><a href='{link}'>{html.escape(sid)}</a></td>"
            f"<td>{html.escape(str(s.get('state') or '-'))}</td>"
            f"<td>{s.get('fps') or 0:.1f}</td>"
            f"<td>{'-' if latency is None else f'{latency:.0f} ms'}</td>"
            f"<td class='problem'>{html.escape(problem or '')}</td></tr>"
        )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>streamd</title>"
        f"<style>{_STYLE}</style></head><body><h1>streamd</h1>"
        f"<p>backend {html.escape(str(status.get('backend') or '-'))}</p><table>"
        "<tr><th></th><th>stream</th><th>state</th><th>analysed fps</th><th>latency</th>"
        "<th>problem</th></tr>"
        f"{''.join(rows)}</table>{_REFRESH}</body></html>"
    )


def stream(sid: str, token: str | None) -> str:
    name = html.escape(sid)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{name} — streamd</title>"
        f"<style>{_STYLE}</style></head><body><p><a href='/{_q(token)}'>all streams</a></p>"
        f"<h1>{name}</h1><img class='live' id='live' "
        f"src='/streams/{quote(sid)}.mjpg{_q(token)}' alt='{name} live'></body></html>"
    )
