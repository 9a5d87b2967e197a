"""A real RTSP server for capture tests: GStreamer's gst-rtsp-server via PyGObject.

Run by the *system* python3 (which has ``gi``), not the venv::

    /usr/bin/python3 tests/rtsp_server.py --port 8554 --mount /cam [--file clip.mp4]

Without ``--file`` it serves a live test pattern encoded with x264 (small, 10 fps); with an H.264
MP4 it serves the file's own stream without re-encoding (so it costs almost no CPU). Prints
``READY rtsp://127.0.0.1:PORT/MOUNT`` on stdout once it listens; SIGTERM stops it. With
``--user NAME`` it asks for Basic authentication, with the password from the environment
variable ``RTSP_PASSWORD`` (not the command line, which every user can read).
"""

import argparse
import os
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def _require_login(server, factory, user: str, password: str) -> None:
    auth = GstRtspServer.RTSPAuth()
    token = GstRtspServer.RTSPToken()
    token.set_string("media.factory.role", "viewer")
    auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
    server.set_auth(auth)
    perms = GstRtspServer.RTSPPermissions()
    perms.add_permission_for_role("viewer", "media.factory.access", True)
    perms.add_permission_for_role("viewer", "media.factory.construct", True)
    factory.set_permissions(perms)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mount", default="/cam")
    ap.add_argument("--file", help="H.264 MP4 to serve (default: a live test pattern)")
    ap.add_argument("--fps", type=int, default=10)
    ap.add_argument("--user", help="require this user and $RTSP_PASSWORD (Basic auth)")
    args = ap.parse_args()

    Gst.init(None)
    if args.file:
        launch = (
            f'( filesrc location="{args.file}" ! qtdemux ! h264parse config-interval=-1 '
            "! rtph264pay name=pay0 pt=96 )"
        )
    else:
        launch = (
            "( videotestsrc is-live=true pattern=ball ! "
            f"video/x-raw,width=320,height=240,framerate={args.fps}/1 ! "
            "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=10 ! "
            "rtph264pay name=pay0 pt=96 config-interval=1 )"
        )
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch)
    factory.set_shared(True)
    if args.user:
        _require_login(server, factory, args.user, os.environ["RTSP_PASSWORD"])
    server.get_mount_points().add_factory(args.mount, factory)
    if server.attach(None) == 0:
        print(f"ERROR cannot listen on port {args.port}", flush=True)
        return 1
    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, loop.quit)
    print(f"READY rtsp://127.0.0.1:{args.port}{args.mount}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
