"""A documented check: a headless Chromium plays a clip served by the agent's HTTP endpoint.

    .venv/bin/python bench/clip_in_browser.py CLIP.mp4 --screenshot shot.png

The clip is put in a clip store and served by the agent's own exporter (``GET /clips/<id>.mp4``,
the route the daemon uses). A page on a second local server holds a ``<video>`` of that URL,
plays it muted, seeks to ``--seek`` of its length (a Range request) and reports to its server
what the browser saw: the video's size, duration, and the time it reached. Chromium comes from
Debian's ``chromium`` package (not part of ``make test``: it is a 100 MB browser). Exits 0 when the
browser played past 1 s and the seek worked; the screenshot shows the frame it was on.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict
from urllib.parse import parse_qs, urlsplit

from edge_agent.clips.http import ClipRoute
from edge_agent.clips.store import ClipStore
from edge_agent.daemon.exporter import Exporter, Sources

CLIP_ID = "c" * 32
PAGE = """<!doctype html><html><body style="margin:0;background:#000">
<video id="v" src="{src}" muted autoplay playsinline height="380"></video>
<script>
const v = document.getElementById("v");
let seeked = false;
function report(what) {{
  fetch("/report?" + new URLSearchParams({{what, w: v.videoWidth, h: v.videoHeight,
        duration: v.duration, t: v.currentTime, error: v.error ? v.error.code : ""}}));
}}
v.addEventListener("error", () => report("error"));
v.addEventListener("timeupdate", () => {{
  if (!seeked && v.currentTime > 1.0) {{
    seeked = true; report("played"); v.currentTime = v.duration * {seek};
  }}
}});
v.addEventListener("seeked", () => {{ v.pause(); report("seeked"); }});
</script></body></html>"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("clip", type=Path, help="an MP4 the agent wrote (state_dir/clips/*.mp4)")
    ap.add_argument("--screenshot", type=Path, required=True)
    ap.add_argument("--chromium", default="chromium")
    ap.add_argument("--seek", type=float, default=0.35, help="where to seek, 0..1 of the clip")
    args = ap.parse_args()
    reports: Dict[str, Dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = ClipStore(Path(tmp) / "clips", 10**10)
        store.begin(CLIP_ID, "check")
        shutil.copy(args.clip, store.part_path(CLIP_ID))
        store.commit(CLIP_ID, 0.0)
        ex = Exporter(Sources(cameras=[], stats=dict, engine=dict),
                      clips=ClipRoute(store, None, True))
        ex.start("127.0.0.1", 0)
        src = f"http://127.0.0.1:{ex.port}/clips/{CLIP_ID}.mp4"

        class Page(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                url = urlsplit(self.path)
                if url.path == "/report":
                    q = {k: v[0] for k, v in parse_qs(url.query).items()}
                    reports[q["what"]] = q
                    body = b"ok"
                else:
                    body = PAGE.format(src=src, seek=args.seek).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a) -> None:
                pass

        page = ThreadingHTTPServer(("127.0.0.1", 0), Page)
        threading.Thread(target=page.serve_forever, daemon=True).start()
        cmd = [args.chromium, "--headless=new", "--no-sandbox", "--disable-gpu",
               "--autoplay-policy=no-user-gesture-required", "--window-size=660,400",
               f"--user-data-dir={tmp}/profile", "--virtual-time-budget=30000",
               f"--screenshot={args.screenshot.resolve()}",
               f"http://127.0.0.1:{page.server_address[1]}/"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        page.shutdown()
        ex.stop()
    print(json.dumps(reports, indent=1))
    if done.returncode:
        print(done.stderr[-2000:], file=sys.stderr)
    ok = "played" in reports and "seeked" in reports and "error" not in reports
    print("browser played the served clip and seeked in it" if ok else "NOT played")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
