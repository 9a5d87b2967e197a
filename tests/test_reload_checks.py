"""Issue 23, finding 7: a reload tells the truth. It runs the start-up checks, claims only what
it applies, refuses a config that is not a regular file at once, and bursts of requests are one
reload that never holds up the one asking.

The same against a running agent (SIGHUP, cmd/config.reload, ping) is in
test_reload_agent.py.
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import pytest

from edge_agent import config as cfgmod
from edge_agent.daemon.reload import Reloader, command, plan

BASE = """\
state_dir: {state}
model: {{path: {model}}}
mqtt: {{username: cam, password: s3cret}}
tracker: {{default: {{high_thresh: 0.5}}}}
events: {{sinks: {{jsonl: events.jsonl}}}}
cameras:
  - name: door
    source: rtsp://10.0.0.5/s
    zones: [{{name: hall, min_count: 5}}]
"""


@pytest.fixture
def site(tmp_path, yolox_nano):
    """(config file, its text, the running config loaded from it)."""
    text = BASE.format(state=tmp_path / "state", model=yolox_nano)
    f = tmp_path / "site.yaml"
    f.write_text(text)
    return f, text, cfgmod.load(f, environ={})


def _line(text: str, fragment: str) -> int:
    return next(i for i, ln in enumerate(text.splitlines(), 1) if fragment in ln)


@pytest.mark.parametrize("edit, fragment, key", [
    (lambda t, tmp: re.sub(r"model: \{path: [^}]*\}", "model: {path: /nowhere/m.onnx}", t),
     "model:", "model.path"),
    (lambda t, tmp: t + f"update: {{trusted_keys: [{tmp}/missing.pub]}}\n",
     "update:", "update.trusted_keys[0]"),
    (lambda t, tmp: t.replace("jsonl: events.jsonl", f"jsonl: {tmp}"),  # a directory
     "jsonl:", "events.sinks.jsonl"),
    (lambda t, tmp: t.replace("rtsp://10.0.0.5/s", f"{tmp}/gone.mp4"),
     "source:", "cameras[0].source"),
])
def test_a_reload_fails_the_start_up_checks_with_file_and_line(site, tmp_path, edit, fragment,
                                                                key):
    f, text, running = site
    bad = edit(text, tmp_path)
    f.write_text(bad)
    applied = []
    report = Reloader(str(f), lambda: running, applied.append).reload("test")
    assert not report["ok"] and not applied, report
    want = f"{f}:{_line(bad, fragment)}: {key}: "
    assert any(e.startswith(want) for e in report["errors"]), (want, report["errors"])


def test_a_changed_model_is_checked_even_while_the_store_runs_another(site, tmp_path):
    # A model store version is what runs, so start-up would not open model.path; a reload that
    # names a new one must still find it, or the claim "needs a restart" hides a failed start.
    f, text, running = site
    (tmp_path / "state" / "models" / "versions").mkdir(parents=True)
    bad = text.replace(str(running.model.path), str(tmp_path / "missing.onnx"))
    f.write_text(bad)
    report = Reloader(str(f), lambda: running, lambda p: None).reload("test")
    assert not report["ok"]
    assert report["errors"][0].startswith(f"{f}:2: model.path: "), report


@pytest.mark.parametrize("edit, listed", [
    (("jsonl: events.jsonl", "jsonl: other.jsonl"), "events.sinks"),
    (("events: {sinks", "events: {snapshots: {max_dim: 640}, sinks"), "events.snapshots"),
    (("events: {sinks", "events: {plate: {ocr: false}, sinks"), "events.plate.ocr"),
    (("tracker:", "metrics: {port: 9999}\ntracker:"), "metrics"),
    (("tracker:", "log: {level: debug}\ntracker:"), "log"),
    (("password: s3cret", "password: other"), "mqtt"),
    (("source: rtsp://10.0.0.5/s", "source: rtsp://10.0.0.5/s\n    stall_timeout_s: 9"),
     "cameras.door.stall_timeout_s"),
])
def test_what_a_reload_cannot_apply_is_listed_and_left_as_it_runs(site, edit, listed):
    f, text, running = site
    f.write_text(text.replace(*edit))
    p = plan(running, cfgmod.load(f, environ={}))
    assert listed in p.needs_restart and not p.changed, (p.needs_restart, p.changed)
    # what runs afterwards is exactly what ran before
    assert p.config.model_dump(mode="json") == running.model_dump(mode="json")


def test_every_changed_key_is_applied_or_listed(site):
    # one edit of each kind at once: the applied ones change what runs, the rest are listed
    f, text, running = site
    edited = (text.replace("jsonl: events.jsonl", "jsonl: other.jsonl, console: true")
              .replace("min_count: 5", "min_count: 2")
              .replace("high_thresh: 0.5", "high_thresh: 0.6")
              + "metrics: {port: 9999}\n")
    f.write_text(edited)
    p = plan(running, cfgmod.load(f, environ={}))
    assert p.changed == ["tracker", "cameras.door"]
    assert set(p.needs_restart) == {"events.sinks", "metrics"}
    runs = p.config
    assert runs.cameras[0].zones[0].min_count == 2 and runs.tracker.default.high_thresh == 0.6
    assert runs.events.sinks.jsonl == "events.jsonl" and not runs.events.sinks.console
    assert runs.metrics.port == running.metrics.port


def test_a_fifo_config_is_refused_at_once(site, tmp_path):
    f, _text, running = site
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # nobody ever writes to it
    t0 = time.monotonic()
    report = Reloader(str(fifo), lambda: running, lambda p: None).reload("test")
    assert time.monotonic() - t0 < 1.0
    assert not report["ok"] and "not a regular file (a FIFO)" in report["errors"][0], report
    with pytest.raises(cfgmod.ConfigError, match="not a regular file"):
        cfgmod.load(fifo)
    with pytest.raises(cfgmod.ConfigError, match="a directory"):
        cfgmod.load(tmp_path)


def test_a_burst_of_requests_is_one_reload(site):
    f, text, running = site
    applied = []
    # quiet_s well above the 20 ms between requests, even on a loaded machine
    r = Reloader(str(f), lambda: running, applied.append, quiet_s=1.0, max_delay_s=10.0)
    f.write_text(text.replace("min_count: 5", "min_count: 3"))
    tickets = []
    for _ in range(49):  # 49 SIGHUPs in about a second
        tickets.append(r.request("SIGHUP"))
        time.sleep(0.02)
    reports = [t.wait(10) for t in tickets]
    assert all(rep is not None and rep["ok"] for rep in reports)
    assert r.reloads == 1 and len(applied) == 1
    assert len({id(t) for t in tickets}) == 1


def test_a_request_never_waits_for_the_reload_in_progress(site):
    f, text, running = site
    f.write_text(text.replace("min_count: 5", "min_count: 3"))
    release = threading.Event()
    r = Reloader(str(f), lambda: running, lambda p: release.wait(10), quiet_s=0.01)
    first = r.request("SIGHUP")
    handler = command(r, wait_s=10)
    time.sleep(0.3)  # the first reload now waits in apply (as on a busy inference loop)
    t0 = time.monotonic()
    late = []
    reply = command(r, later=lambda req: late.append, wait_s=0.3)({"request_id": "x"})
    assert time.monotonic() - t0 < 1.0
    assert reply["pending"] is True
    release.set()
    assert first.wait(10)["ok"]
    deadline = time.monotonic() + 10
    while not late and time.monotonic() < deadline:
        time.sleep(0.02)
    assert late and late[0]["ok"]  # the report followed when the reload ended
    assert r.reloads == 2  # the request during a reload got one of its own, after it
    assert handler({"request_id": "y"})["ok"]


def test_the_report_names_the_file(site):
    f, _text, running = site
    report = Reloader(str(f), lambda: running, lambda p: None).reload("test")
    assert report == {"ok": True, "file": str(f), "applied": [], "needs_restart": [],
                      "errors": []}
    assert Path(report["file"]).is_file()
