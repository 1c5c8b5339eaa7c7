#!/usr/bin/python3
"""A real RTSP server for the tests: Debian's GStreamer RTSP server (gst-rtsp-server).

Run with the *system* python3 (PyGObject comes from Debian's python3-gi, not
from the venv). Serves an H.264 or H.265 MP4 without re-encoding (paced in real time
by the pipeline clock) at rtsp://127.0.0.1:PORT/MOUNT, optionally behind
basic auth. The password is read from the environment so it never shows in
a process list. Prints "ready" once it accepts connections.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mount", default="/cam")
    p.add_argument("--file", required=True, help="H.264/H.265 MP4 to serve (not re-encoded)")
    p.add_argument("--codec", choices=["h264", "h265"], default="h264")
    p.add_argument("--user", default=None, help="require basic auth; password in $RTSP_PASSWORD")
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
    if args.user:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "user")
        basic = GstRtspServer.RTSPAuth.make_basic(args.user, os.environ["RTSP_PASSWORD"])
        auth.add_basic(basic, token)
        server.set_auth(auth)
        factory.add_role_from_structure(
            Gst.Structure.from_string(
                "user, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"
            )[0]
        )
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
