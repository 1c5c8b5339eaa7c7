#!/usr/bin/python3
"""A real RTSP server for the tests: Debian's GStreamer RTSP server (gst-rtsp-server).

Run with the *system* python3 (PyGObject comes from Debian's python3-gi, not
from the venv). Serves an H.264 or H.265 MP4 without re-encoding (paced in
real time by the pipeline clock) at rtsp://127.0.0.1:PORT/MOUNT, optionally
behind basic auth, optionally over TLS (rtsps://). The password is read from
the environment so it never shows in a process list. Prints "ready" once it accepts connections.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gio, GLib, Gst, GstRtspServer  # noqa: E402


def _auth(
    factory: GstRtspServer.RTSPMediaFactory, user: str | None, tls: str | None
) -> GstRtspServer.RTSPAuth:
    auth = GstRtspServer.RTSPAuth()
    token = GstRtspServer.RTSPToken()
    token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "viewer")
    if user:
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, os.environ["RTSP_PASSWORD"]), token)
    else:
        auth.set_default_token(token)  # anyone may watch
    if tls:
        auth.set_tls_certificate(Gio.TlsCertificate.new_from_file(tls))
    factory.add_role_from_structure(
        Gst.Structure.from_string(
            "viewer, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"
        )[0]
    )
    return auth


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mount", default="/cam")
    p.add_argument("--file", required=True, help="H.264/H.265 MP4 to serve (not re-encoded)")
    p.add_argument("--codec", choices=["h264", "h265"], default="h264")
    p.add_argument("--user", default=None, help="require basic auth; password in $RTSP_PASSWORD")
    p.add_argument("--tls", default=None, help="PEM with certificate and key: serve rtsps://")
    args = p.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    location = args.file.replace("\\", "\\\\").replace('"', '\\"')
    factory.set_launch(
        f'( filesrc location="{location}" ! qtdemux ! {args.codec}parse '
        f"! rtp{args.codec}pay name=pay0 pt=96 config-interval=1 )"
    )
    factory.set_shared(False)  # every client gets its own playback from the start
    if args.user or args.tls:
        server.set_auth(_auth(factory, args.user, args.tls))
    server.get_mount_points().add_factory(args.mount, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr)
        return 1
    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    print("ready", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
