"""Re-make the sample clip: a cut of a source clip, every Nth frame, re-encoded with libx264.

Needs PyAV (``pip install av``; its wheels carry FFmpeg with libx264), which the project itself
does not use. The command that made ``retail02_12s.mp4`` (README.md here):

    python samples/make_sample.py ../shared/data/video/nvidia_Retail02_short.mp4 \\
        samples/retail02_12s.mp4 --stop 360 --step 2 --crf 27
"""

from __future__ import annotations

import argparse
import os
from fractions import Fraction

import av


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source")
    ap.add_argument("dest")
    ap.add_argument("--start", type=int, default=0, help="first source frame kept")
    ap.add_argument("--stop", type=int, required=True, help="source frame to stop before")
    ap.add_argument("--step", type=int, default=1, help="keep every Nth frame (fps / N)")
    ap.add_argument("--crf", type=int, default=27, help="x264 quality (lower: better, larger)")
    args = ap.parse_args()
    with av.open(args.source) as inp, av.open(args.dest, "w") as out:
        vin = inp.streams.video[0]
        rate = round(float(vin.average_rate) / args.step)
        vout = out.add_stream("libx264", rate=rate)
        vout.width, vout.height, vout.pix_fmt = vin.width, vin.height, "yuv420p"
        vout.options = {"crf": str(args.crf), "preset": "slow", "movflags": "+faststart"}
        kept = 0
        for i, frame in enumerate(inp.decode(vin)):
            if i >= args.stop:
                break
            if i < args.start or (i - args.start) % args.step:
                continue
            frame = frame.reformat(format="yuv420p")
            # pts counts output frames, so its time base must be the output rate's (the
            # decoder's own time base would leave every packet at pts 0: no frame rate).
            frame.pts, frame.time_base = kept, Fraction(1, rate)
            kept += 1
            out.mux(vout.encode(frame))
        out.mux(vout.encode())
    print(f"{args.dest}: {kept} frames, {os.path.getsize(args.dest)} bytes")


if __name__ == "__main__":
    main()
