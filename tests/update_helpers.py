"""Helpers for the update tests: a real HTTP server with faults, tiny ONNX models, signing."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pytest

from edge_agent.inference import manifest as mf
from edge_agent.update import signing

# --- an HTTP server with faults ---------------------------------------------------------------


class ModelServer:
    """The stdlib's threading HTTP server on a free port, serving registered files.

    Faults per file: ``404``, ``500``, ``truncate`` (announces the full length, sends half, then
    closes), ``stall`` (sends half, then nothing for a long time), ``drip`` (``drip_bytes`` per
    ``drip_s``, for a download that takes a while), ``trickle`` (one byte per second, the whole
    length announced). :meth:`redirect` answers with a redirect. ``requests`` records (path,
    Range header).
    """

    def __init__(self, tls: Optional[Tuple[Path, Path]] = None, host: str = "127.0.0.1") -> None:
        self.files: Dict[str, Tuple[bytes, Optional[str]]] = {}
        self.requests: List[Tuple[str, Optional[str]]] = []
        self.auth: List[Tuple[str, Optional[str]]] = []  # (path, Authorization header)
        self.drip_bytes, self.drip_s = 64 * 1024, 0.05
        self.stall_s = 30.0
        self._stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                server._serve(self)

        class Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        self.httpd = Server((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.host = f"[{host}]" if ":" in host else host
        self.scheme = "http"
        if tls is not None:  # (certificate, key): serve https
            import ssl

            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
            self.scheme = "https"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def add(self, name: str, data: bytes, fault: Optional[str] = None) -> str:
        self.files[f"/{name}"] = (data, fault)
        return f"{self.scheme}://{self.host}:{self.port}/{name}"

    def redirect(self, name: str, location: str, code: int = 302) -> str:
        """``name`` answers ``code`` with ``Location: location``."""
        return self.add(name, location.encode(), f"redirect{code}")

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        rng = h.headers.get("Range")
        self.requests.append((h.path, rng))
        self.auth.append((h.path, h.headers.get("Authorization")))
        if h.path not in self.files:
            h.send_error(404, "not found")
            return
        data, fault = self.files[h.path]
        if fault and fault.startswith("redirect"):
            h.send_response(int(fault[len("redirect"):]))
            h.send_header("Location", data.decode())
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        if fault in ("404", "500"):
            h.send_error(int(fault), "fault")
            return
        start = 0
        m = re.match(r"bytes=(\d+)-$", rng or "")
        if m and int(m.group(1)) >= len(data):
            h.send_response(416)
            h.send_header("Content-Range", f"bytes */{len(data)}")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        if m:
            start = int(m.group(1))
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            h.send_response(200)
        body = data[start:]
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        try:
            self._body(h, body, fault)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _body(self, h, body: bytes, fault: Optional[str]) -> None:
        if fault == "truncate":
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            h.close_connection = True
            return
        if fault == "stall":
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            self._stop.wait(self.stall_s)
            return
        if fault == "trickle":
            for i in range(len(body)):
                h.wfile.write(body[i:i + 1])
                h.wfile.flush()
                if self._stop.wait(1.0):
                    return
            return
        if fault == "drip":
            for i in range(0, len(body), self.drip_bytes):
                h.wfile.write(body[i:i + self.drip_bytes])
                h.wfile.flush()
                if self._stop.wait(self.drip_s):
                    return
            return
        h.wfile.write(body)

    def close(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class ForwardProxy:
    """A minimal HTTP forward proxy on a free port: GET with an absolute URL is relayed, CONNECT
    opens a tunnel. ``seen`` records (method, target, Proxy-Authorization header)."""

    def __init__(self) -> None:
        import http.client
        import urllib.parse

        self.seen: List[Tuple[str, str, Optional[str]]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _note(self):
                proxy.seen.append((self.command, self.path,
                                   self.headers.get("Proxy-Authorization")))

            def do_GET(self):
                self._note()
                u = urllib.parse.urlsplit(self.path)
                up = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
                skip = ("proxy-authorization", "host", "connection")
                up.request("GET", u.path or "/", headers={k: v for k, v in self.headers.items()
                                                          if k.lower() not in skip})
                r = up.getresponse()
                body = r.read()
                self.send_response(r.status)
                for k, v in r.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                up.close()

            def do_CONNECT(self):
                self._note()
                host, port = self.path.rsplit(":", 1)
                up = socket.create_connection((host, int(port)), timeout=10)
                self.send_response(200)
                self.end_headers()
                self.wfile.flush()
                client = self.connection

                def pipe(src, dst):
                    try:
                        while True:
                            data = src.recv(65536)
                            if not data:
                                break
                            dst.sendall(data)
                    except OSError:
                        pass
                    for sock in (src, dst):
                        try:
                            sock.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass

                back = threading.Thread(target=pipe, args=(up, client), daemon=True)
                back.start()
                pipe(client, up)
                back.join(10)
                up.close()
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# --- tiny models ------------------------------------------------------------------------------

ROWS = {  # x1, y1, x2, y2 (input px), objectness (set from the image), class scores
    "weapon": [[4, 4, 20, 20, 0, 0.05, 0.05, 0.9]],
    "crowd": [[10, 10, 50, 60, 0, 0.95]],
    "plate": [[30, 40, 60, 50, 0, 0.9]],
}
CLASSES = {"weapon": ["pistol", "rifle", "knife"], "crowd": ["person"], "plate": ["plate"]}


def make_model(path: Path, heads=("weapon", "crowd"), size: int = 64, nan: bool = False,
               slow: int = 0, name: str = "tiny", pad_kb: int = 0) -> Dict[str, Any]:
    """A multi-head ONNX whose boxes are constants and whose objectness is mean pixel / 255.

    ``nan``: the objectness is multiplied by a NaN constant (every output NaN). ``slow``: that
    many 384x384 MatMuls that depend on the input (so they cannot be folded away) are added.
    ``pad_kb``: an unused initializer of that size (a bigger file to download).
    Returns the manifest (without sha256/version) for :func:`signed`.
    """
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("ReduceMean", ["images"], ["mean4"], axes=[1, 2, 3], keepdims=1),
             helper.make_node("Reshape", ["mean4", "shape3"], ["mean"]),
             helper.make_node("Div", ["mean", "c255"], ["obj0"]),
             helper.make_node("Mul", ["obj0", "factor"], ["obj1"])]
    inits = [numpy_helper.from_array(np.array(255, np.float32), "c255"),
             numpy_helper.from_array(np.array(np.nan if nan else 1.0, np.float32), "factor"),
             numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "shape3")]
    obj = "obj1"
    if pad_kb:
        pad = np.random.default_rng(1).random(pad_kb * 256).astype(np.float32)
        inits.append(numpy_helper.from_array(pad, "pad"))
    if slow:
        w = np.full((384, 384), 1e-3, np.float32)
        inits += [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(1, np.float32),
                                                                           "zero")]
        nodes.append(helper.make_node("Mul", ["mean", "w"], ["m0"]))  # (N, 384, 384)
        for i in range(slow):
            nodes.append(helper.make_node("MatMul", [f"m{i}", "w"], [f"m{i + 1}"]))
        nodes += [helper.make_node("ReduceMean", [f"m{slow}"], ["mr"], axes=[1, 2], keepdims=1),
                  helper.make_node("Mul", ["mr", "zero"], ["mz"]),
                  helper.make_node("Add", ["obj1", "mz"], ["obj2"])]
        obj = "obj2"
    outputs = []
    for head in heads:
        base = np.array(ROWS[head], np.float32)[None]
        mask = np.zeros_like(base)
        mask[..., 4] = 1
        inits += [numpy_helper.from_array(base, f"{head}_base"),
                  numpy_helper.from_array(mask, f"{head}_mask")]
        nodes += [helper.make_node("Mul", [obj, f"{head}_mask"], [f"{head}_obj"]),
                  helper.make_node("Add", [f"{head}_obj", f"{head}_base"], [head])]
        outputs.append(helper.make_tensor_value_info(head, TensorProto.FLOAT,
                                                     ["N", base.shape[1], base.shape[2]]))
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                    ["N", 3, size, size])], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return {
        "format": 1, "name": name, "version": "0", "sha256": mf.file_sha256(path),
        "input": {"name": "images", "batch": None, "height": size, "width": size,
                  "color": "BGR", "scale": 1.0, "pad_value": 0},
        "outputs": [{"name": h, "decode": "boxes", "classes": CLASSES[h]} for h in heads],
        "heads": {h: {"output": h} for h in heads},
    }


def manifest_bytes(manifest: Dict[str, Any], data: bytes, version: str,
                   not_after: Optional[float] = None) -> bytes:
    import hashlib

    m = dict(manifest, sha256=hashlib.sha256(data).hexdigest(), size=len(data), version=version,
             not_after=signing.format_time(not_after if not_after is not None
                                           else time.time() + 86400))
    return (json.dumps(m, indent=2) + "\n").encode()


def signed(manifest: Dict[str, Any], data: bytes, version: str, key: Path,
           not_after: Optional[float] = None) -> Dict[str, Any]:
    """The envelope of ``data`` (the ONNX bytes) as ``version``, signed with ``key``."""
    return signing.sign(manifest_bytes(manifest, data, version, not_after), key)


def request(url: str, data: bytes, version: str, envelope: Any, rid: str = "r1"
            ) -> Dict[str, Any]:
    import hashlib

    return {"request_id": rid, "url": url, "sha256": hashlib.sha256(data).hexdigest(),
            "version": version, "signature": envelope}


def write_clip(path: Path, frames: int = 40, size=(160, 120), value: int = 235) -> Path:
    """A small bright mp4 clip (objectness of the tiny models ~ value / 255)."""
    import cv2

    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, size)
    rng = np.random.default_rng(0)
    for _ in range(frames):
        img = np.clip(value + rng.integers(-5, 6, (size[1], size[0], 3)), 0, 255)
        w.write(img.astype(np.uint8))
    w.release()
    return path


# --- an agent in this process: the real Pipeline, store and updater, no MQTT ------------------


class LocalAgent:
    """Pipeline + model store + updater on a looping clip, as the daemon wires them.

    ``frames`` records (frame index, engine version, track IDs) per processed frame; ``docs``
    every published transition.
    """

    def __init__(self, state_dir: Path, model: Path, clip: Path, keys: List[str],
                 **update: Any):
        from edge_agent import config as cfgmod
        from edge_agent.inference import open_engine
        from edge_agent.update import startup, worker
        from edge_agent.update.host import PipelineHost

        # latency factor 10: a loaded machine is noisy; the slow model (200 MatMuls) is ~200x slower
        upd = {"trusted_keys": keys, "health_check_batches": 8, "download_timeout_s": 2,
               "download_retries": 0, "health_timeout_s": 20, "health_latency_factor": 10}
        upd.update(update)
        self.cfg = cfgmod.Config.model_validate({
            "device_id": "dev", "state_dir": str(state_dir), "model": {"path": str(model)},
            "cameras": [{"name": "cam", "source": str(clip), "loop": True}],
            "mqtt": {"enabled": False}, "events": {"snapshots": {"enabled": False}},
            "update": upd})
        self.store = startup.open_store(self.cfg)
        engine = open_engine(startup.model_config(self.cfg, self.store))
        self.frames: List[Tuple[int, str, List[int]]] = []
        self.docs: List[Dict[str, Any]] = []
        self.pipe = _pipeline(self.cfg, engine, self._hook)
        self.updater = worker.make_updater(self.cfg, self.store, PipelineHost(self.pipe),
                                           lambda doc, route=None: self.docs.append(doc))
        self._thread = threading.Thread(target=self.pipe.run, daemon=True)
        self._thread.start()
        self.updater.start()
        self.recovered = self.updater.recover()

    def _hook(self, f, tracks, st) -> None:
        ids = sorted(int(t) for h in tracks.values() for t in h.active[:, 4])
        self.frames.append((f.index, self.pipe.engine_info.version, ids))

    def wait_frames(self, n: int, timeout: float = 20.0) -> None:
        start = len(self.frames)
        deadline = time.monotonic() + timeout
        while len(self.frames) < start + n:
            assert time.monotonic() < deadline, "the pipeline stopped processing frames"
            time.sleep(0.02)

    def final(self, rid: str, timeout: float = 30.0) -> Dict[str, Any]:
        """The terminal transition of request ``rid``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for d in list(self.docs):
                if d.get("request_id") == rid and d["state"] in ("COMMITTED", "ROLLED_BACK",
                                                                 "FAILED"):
                    return d
            time.sleep(0.02)
        raise AssertionError(f"no final state for {rid}; seen "
                             f"{[d['state'] for d in self.docs if d.get('request_id') == rid]}")

    def update(self, req: Dict[str, Any], timeout: float = 30.0) -> Dict[str, Any]:
        self.updater.submit(req)
        return self.final(req["request_id"], timeout)

    def close(self) -> None:
        self.updater.stop()
        self.live = list(self.frames)  # what ran before the stop (which may skip a last frame)
        self.pipe.stop()
        self._thread.join(15)
        self.pipe.engine.close()


def _pipeline(cfg, engine, hook):
    """The pipeline without event delivery to anywhere."""
    from edge_agent.outbox.delivery import EventDelivery
    from edge_agent.outbox.eventlog import MemoryLog
    from edge_agent.pipeline import Pipeline

    return Pipeline(cfg, engine, EventDelivery(MemoryLog(), []), on_frame=hook)


def signed_update_kit(d: Path, frames: int = 40) -> Dict[str, Any]:
    """What the update tests start from, in folder ``d``: a signing key pair (``key``, ``pub``),
    a version-1 model (``base``, ``manifest``, its bytes as ``data``), a clip (``clip``) and a
    running :class:`ModelServer` (``server``: the caller closes it)."""
    priv, pub, _ = signing.keygen(d / "ops")
    base = d / "base.onnx"
    man = make_model(base)
    base.with_suffix(".json").write_text(json.dumps(dict(man, version="1")))
    return {"dir": d, "key": priv, "pub": pub.read_text().strip(), "base": base, "manifest": man,
            "clip": write_clip(d / "clip.mp4", frames=frames), "server": ModelServer(),
            "data": base.read_bytes()}
