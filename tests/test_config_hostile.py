"""Hostile configs: YAML bombs, numbers no consumer takes, and what only start-up used to find.

Every case goes through both `config validate` and `run`, in a child process with a memory cap
and a time limit: exit 2, a ``file:line: ...`` message, no traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
from config_helpers import assert_validate_refuses

from edge_agent import config as cfgmod
from edge_agent.cli import main as cli_main
from edge_agent.config import yamlsafe

REPO = Path(__file__).resolve().parent.parent
MEMORY_CAP = 1536 << 20  # address space of the child running all cases; a bomb needs far more
CASE_SECONDS = 10.0


def _laughs(levels: int, width: int) -> str:
    """Nested aliases: each level refers to the previous one ``width`` times."""
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        refs = ", ".join(f"*l{i - 1}" for _ in range(width))
        lines.append(f"l{i}: &l{i} [{refs}]")
    return "\n".join(lines) + "\n"


def _merge_bomb() -> str:
    # merge keys copy mappings; keys differ per level so the copies do not collapse
    out = ["a0: &a0 {x0: 1, y0: 2, z0: 3}"]
    for i in range(1, 30):
        out.append(f"a{i}: &a{i} {{<<: *a{i - 1}, k{i}: [*a{i - 1}, *a{i - 1}, *a{i - 1}]}}")
    return "tracker:\n" + textwrap.indent("\n".join(out), "  ") + "\n"


# name -> (file text, line, fragment of the message)
BOMBS: Dict[str, Tuple[str, int, str]] = {
    "laughs_list": (_laughs(9, 9), 6, "aliases expand it to more than"),
    "laughs_wide": ("a: &a [x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x]\n"
                    "b: &b [" + ", ".join(["*a"] * 400) + "]\n"
                    "c: [" + ", ".join(["*b"] * 400) + "]\n", 3, "aliases expand"),
    "laughs_in_tracker": ("device_id: a\ntracker:\n  x: &x [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n"
                          + "".join(f"  x{i}: &x{i} [*x{'' if i == 0 else i - 1}, "
                                    f"*x{'' if i == 0 else i - 1}, *x{'' if i == 0 else i - 1}, "
                                    f"*x{'' if i == 0 else i - 1}]\n" for i in range(12)),
                          10, "aliases expand"),
    "merge_keys": (_merge_bomb(), 0, "aliases expand"),
    "deep_flow_list": ("cameras: " + "[" * 20000 + "]" * 20000 + "\n", 1, "nested more than"),
    "deep_flow_map": ("a: " + "{b: " * 5000 + "1" + "}" * 5000 + "\n", 1, "nested more than"),
    "deep_block": ("".join("  " * i + f"k{i}:\n" for i in range(60)) + "  " * 60 + "v\n",
                   yamlsafe.MAX_DEPTH + 1, "nested more than"),
    "too_large": ("# padding\n" * 40000 + "device_id: a\n", 1, "larger than 256 KiB"),
    "bad_date": ("device_id: a\nstate_dir: 2001-13-45\n", 2, "cannot read this value: month"),
    "huge_int": ("model:\n  max_batch: " + "9" * 6000 + "\n", 2, "cannot read this value"),
    "not_utf8": ("device_id: a\nstate_dir: \udcff\udcfe\n", 2, "not UTF-8 text"),
    "two_documents": ("device_id: a\n---\ndevice_id: b\n", 2, "malformed YAML"),
}

# (yaml text, line, message fragment): numbers that the schema used to let through
NUMBERS: Dict[str, Tuple[str, int, str]] = {
    "outbox_inf": ("mqtt:\n  outbox:\n    max_mb: .inf\n", 3, "mqtt.outbox.max_mb: Input should "
                   "be a finite number"),
    "snapshots_inf": ("events:\n  snapshots:\n    max_total_mb: .Inf\n", 3,
                      "events.snapshots.max_total_mb: Input should be a finite number"),
    "snapshots_huge": ("events:\n  snapshots:\n    max_total_mb: 1.0e+300\n", 3,
                       "max_total_mb: Input should be less than or equal to 1000000"),
    "reconnect_inf": ("cameras:\n  - name: a\n    source: x\n    reconnect: {min_s: 1, max_s: .inf}"
                      "\n", 4, "cameras[0].reconnect.max_s: Input should be a finite number"),
    "reconnect_exp_inf": ("cameras:\n  - name: a\n    source: x\n    reconnect:\n"
                          "      min_s: 1.0e+999\n", 5, "Input should be a finite number"),
    "hold_nan": ("cameras:\n  - name: a\n    source: x\n    zones:\n      - name: z\n"
                 "        hold_s: .nan\n", 6, "cameras[0].zones[0].hold_s: Input should be a "
                 "finite number"),
    "fps_minus_inf": ("cameras:\n  - name: a\n    source: x\n    fps_limit: -.inf\n", 4,
                      "cameras[0].fps_limit"),
    "keepalive_100000": ("mqtt:\n  keepalive_s: 100000\n", 2,
                         "mqtt.keepalive_s: Input should be less than or equal to 65535"),
    "keepalive_65536": ("mqtt:\n  keepalive_s: 65536\n", 2, "less than or equal to 65535"),
    "detect_every_huge": ("cameras:\n  - name: a\n    source: x\n    detect_every: "
                          "99999999999999999999999999999\n", 4,
                          "cameras[0].detect_every: Input should be less than or equal to 10000"),
    "stall_timeout_past_int32_ms": ("cameras:\n  - name: a\n    source: x\n"
                                    "    stall_timeout_s: 3000000\n", 4,
                                    "stall_timeout_s: Input should be less than or equal to 86400"),
    "mqtt_backoff_inf": ("mqtt:\n  reconnect_max_s: .inf\n", 2, "mqtt.reconnect_max_s"),
    "stats_interval_huge": ("mqtt:\n  stats_interval_s: 1.0e+20\n", 2, "mqtt.stats_interval_s"),
    "inflight_past_16_bits": ("mqtt:\n  max_inflight: 70000\n", 2, "mqtt.max_inflight"),
    "max_rows_huge": ("mqtt:\n  outbox:\n    max_rows: 100000000000000000000\n", 3,
                      "mqtt.outbox.max_rows"),
    "commit_interval_huge": ("mqtt:\n  outbox:\n    commit_interval_ms: 1000000000\n", 3,
                             "mqtt.outbox.commit_interval_ms"),
    "weapon_window_huge": ("events:\n  weapon:\n    window: 1000000000\n", 3,
                           "events.weapon.window"),
    "download_inf": ("update:\n  max_download_mb: .inf\n", 2, "update.max_download_mb"),
    "ha_prefix_wildcard": ("mqtt:\n  ha_prefix: 'home/#'\n", 2, "mqtt.ha_prefix: must not contain"),
    "prefix_nul": ('mqtt:\n  topic_prefix: "edge\\0agent"\n', 2,
                   "mqtt.topic_prefix: not usable in a topic: it contains the character U+0000"),
    "prefix_dollar": ("mqtt:\n  topic_prefix: $SYS\n", 2, "mqtt.topic_prefix: not usable"),
}

# Values at the bounds are accepted: the bounds are the consumers' limits, not tighter.
ACCEPTED = [
    "mqtt:\n  keepalive_s: 65535\n  max_inflight: 65535\n",
    "cameras:\n  - name: a\n    source: x\n    stall_timeout_s: 86400\n    detect_every: 10000\n"
    "    reconnect: {min_s: 86400, max_s: 86400}\n",
    "events:\n  snapshots:\n    max_total_mb: 1000000\n",
]


def test_bombs_are_refused_fast_in_process():
    for name, (text, line, fragment) in BOMBS.items():
        t0 = time.monotonic()
        with pytest.raises(cfgmod.ConfigError) as exc:
            cfgmod.load_text(text, f"{name}.yaml", environ={})
        assert time.monotonic() - t0 < 2.0, name
        msg = exc.value.problems[0]
        if name not in ("too_large", "not_utf8"):  # file-level checks: see the subprocess test
            assert msg.startswith(f"{name}.yaml:{line}: " if line else f"{name}.yaml:"), msg
            assert fragment in msg, (name, msg)


@pytest.mark.parametrize("case", sorted(NUMBERS))
def test_numbers_past_what_consumers_take_are_refused(case, tmp_path, capsys):
    text, line, fragment = NUMBERS[case]
    assert_validate_refuses(tmp_path / f"{case}.yaml", text, line, fragment, capsys)


@pytest.mark.parametrize("text", ACCEPTED)
def test_values_at_the_bounds_are_accepted(text):
    cfgmod.load_text(text, environ={})


def _bounded_fields(model=cfgmod.Config, seen=None):
    """(field name, upper bound) of every number field of the config, nested models included."""
    import annotated_types
    from pydantic import BaseModel

    seen = set() if seen is None else seen
    for name, info in model.model_fields.items():
        for t in _model_types(info.annotation):
            if issubclass(t, BaseModel) and t not in seen:
                seen.add(t)
                yield from _bounded_fields(t, seen)
        for m in info.metadata:
            if isinstance(m, annotated_types.Le):
                yield name, m.le


def _model_types(annotation):
    from typing import get_args

    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [t for a in get_args(annotation) for t in _model_types(a)]


def test_every_number_is_bounded_and_the_bound_documented():
    """Each number field has an upper bound, and the shipped config's comment on that key
    states it."""
    shipped = (REPO / "configs" / "edge-agent.yaml").read_text().splitlines()
    bounds = dict(_bounded_fields())
    numbers = {"keepalive_s", "max_mb", "max_total_mb", "detect_every", "stall_timeout_s",
               "min_s", "max_s", "reconnect_min_s", "reconnect_max_s", "max_inflight",
               "max_rows", "commit_interval_ms", "fps_limit", "hold_s", "window"}
    assert numbers <= set(bounds), numbers - set(bounds)
    for name, le in bounds.items():
        text = f"{int(le)}" if float(le).is_integer() else f"{le}"
        lines = [ln for ln in shipped if f"{name}:" in ln or f"{name}," in ln]
        assert any(text in ln.split("#", 1)[-1] for ln in lines if "#" in ln), (name, text)
    assert any("finite" in ln for ln in shipped)


def _write_cases(tmp_path: Path, cases: Dict[str, str]) -> Dict[str, Path]:
    out = {}
    for name, text in cases.items():
        p = tmp_path / f"{name}.yaml"
        p.write_bytes(text.encode("utf-8", "surrogateescape"))
        out[name] = p
    return out


_DRIVER = """
import contextlib, io, json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))
from edge_agent.cli import main
out = {{}}
for name, path in json.loads(sys.argv[1]).items():
    for cmd in (["config", "validate", path], ["run", "--config", path]):
        err = io.StringIO()
        t0 = time.monotonic()
        with contextlib.redirect_stderr(err):
            try:
                rc = main(cmd)
            except BaseException as exc:  # the test reports it
                import traceback
                rc = "Traceback " + traceback.format_exc()[-2000:]
        out[name + " " + cmd[0]] = [rc, err.getvalue()[-3000:], time.monotonic() - t0]
print(json.dumps(out))
"""


def run_both(paths: Dict[str, Path]) -> Dict[str, List]:
    """``config validate`` and ``run`` on every file, in one capped child process."""
    arg = json.dumps({n: str(p) for n, p in paths.items()})
    proc = subprocess.run([sys.executable, "-c", _DRIVER.format(cap=MEMORY_CAP), arg],
                          capture_output=True, text=True, timeout=180, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _assert_refused(results: Dict[str, List], paths: Dict[str, Path], expect) -> None:
    for key, (rc, err, seconds) in results.items():
        name = key.rsplit(" ", 1)[0]
        line, fragment = expect[name]
        assert rc == 2, (key, rc, err)
        assert "Traceback" not in err, (key, err)
        assert seconds < CASE_SECONDS, (key, seconds)
        assert f"error: {paths[name]}:{line}: " in err or line == 0, (key, err)
        assert fragment in err, (key, err)


@pytest.mark.slow
def test_bombs_through_validate_and_run_capped(tmp_path):
    paths = _write_cases(tmp_path, {n: t for n, (t, _, _) in BOMBS.items()})
    results = run_both(paths)
    assert len(results) == 2 * len(BOMBS)
    _assert_refused(results, paths, {n: (ln, frag) for n, (_, ln, frag) in BOMBS.items()})


@pytest.mark.slow
def test_numbers_through_validate_and_run_capped(tmp_path):
    paths = _write_cases(tmp_path, {n: t for n, (t, _, _) in NUMBERS.items()})
    results = run_both(paths)
    assert len(results) == 2 * len(NUMBERS)
    _assert_refused(results, paths, {n: (ln, frag) for n, (_, ln, frag) in NUMBERS.items()})


# --- what only start-up found: model, file sources, TLS files, state dir ---------------------


def _startup_cases(tmp_path: Path, yolox: Path, video: Path) -> Dict[str, Tuple[str, int, str]]:
    no_manifest = tmp_path / "bare" / "model.onnx"  # a real graph, but not one we know
    no_manifest.parent.mkdir()
    no_manifest.write_bytes(yolox.read_bytes() + b"\0")
    not_onnx = tmp_path / "fake" / "model.onnx"
    not_onnx.parent.mkdir()
    not_onnx.write_bytes(b"this is not an onnx graph" * 50)
    from edge_agent.inference import manifest as mf

    man = json.loads((REPO / "engines" / "manifests" / "yolox_nano_coco.json").read_text())
    man["sha256"] = mf.file_sha256(not_onnx)
    not_onnx.with_suffix(".json").write_text(json.dumps(man))
    a_file = tmp_path / "plain-file"
    a_file.write_text("x")

    def cfg(model=str(yolox), source=str(video), extra=""):
        return (f"device_id: t\nstate_dir: {tmp_path / 'state'}\nmodel:\n  path: {model}\n"
                f"cameras:\n  - name: c\n    source: {source}\nmqtt:\n  enabled: false\n{extra}")

    return {
        "model_missing": (cfg(model=str(tmp_path / "nope.onnx")), 4,
                          "model.path: model " + str(tmp_path / "nope.onnx") + ": no such file"),
        "model_without_manifest": (cfg(model=str(no_manifest)), 4, "model.path: model "
                                   f"{no_manifest}: no manifest"),
        "model_not_onnx": (cfg(model=str(not_onnx)), 4, "model.path: model"),
        "model_is_a_dir": (cfg(model=str(tmp_path)), 4, "not a regular file"),
        "manifest_missing": (cfg(extra="") .replace(
            "model:\n", f"model:\n  manifest: {tmp_path / 'm.json'}\n"), 4, "model.manifest: "),
        "file_source_missing": (cfg(source=str(tmp_path / "gone.mp4")), 7,
                                "cameras[0].source: video file not found"),
        "second_camera_missing": (cfg() + "", 0, "cameras[1].source: video file not found"),
        "tls_ca_missing": (cfg().replace("mqtt:\n  enabled: false\n",
                                         f"mqtt:\n  tls:\n    ca_file: {tmp_path / 'ca.pem'}\n"),
                           10, "mqtt.tls.ca_file: no such file"),
        "tracker_unknown_param": (cfg(extra="tracker:\n  default:\n    high_thresh: 0.4\n"
                                        "    max_shadow_ages: 3\n"),
                                  13, "tracker.default.max_shadow_ages: unknown key"),
        "tracker_not_finite": (cfg(extra="tracker:\n  weapon:\n    high_thresh: .inf\n"), 12,
                               "tracker.weapon.high_thresh: Input should be a finite number"),
        "tracker_wrong_type": (cfg(extra="tracker:\n  plate:\n    probation_age: many\n"), 12,
                               "tracker.plate.probation_age: "),
        "tracker_unknown_head": (cfg(extra="tracker:\n  knife: {}\n"), 11,
                                 "tracker.knife: unknown key"),
        "state_dir_is_a_file": (cfg().replace(f"state_dir: {tmp_path / 'state'}",
                                              f"state_dir: {a_file}"),
                                2, "state_dir: " + str(a_file) + " is not a directory"),
    }


@pytest.fixture
def startup_cases(tmp_path, yolox_nano, video_dir):
    cases = _startup_cases(tmp_path, yolox_nano, video_dir / "intel_car-detection.mp4")
    text = cases["second_camera_missing"][0].replace(
        "mqtt:", f"  - name: d\n    source: {tmp_path / 'gone2.mp4'}\nmqtt:")
    cases["second_camera_missing"] = (text, 9, "cameras[1].source: video file not found")
    return cases


def test_validate_finds_what_startup_finds(startup_cases, tmp_path, capsys):
    for name, (text, line, fragment) in startup_cases.items():
        f = tmp_path / f"{name}.yaml"
        f.write_text(text)
        assert cli_main(["config", "validate", str(f)]) == 2, name
        err = capsys.readouterr().err
        assert f"error: {f}:{line}: " in err and fragment in err, (name, err)
        assert "Traceback" not in err


@pytest.mark.slow
def test_run_refuses_the_same_configs_the_same_way(startup_cases, tmp_path):
    paths = _write_cases(tmp_path, {n: t for n, (t, _, _) in startup_cases.items()})
    results = run_both(paths)
    _assert_refused(results, paths, {n: (ln, frag) for n, (_, ln, frag) in startup_cases.items()})
    # validate and run say the same thing
    for name in paths:
        assert results[f"{name} config"][1] == results[f"{name} run"][1], name


def test_a_good_config_validates(tmp_path, yolox_nano, video_dir, capsys):
    f = tmp_path / "good.yaml"
    f.write_text(f"state_dir: {tmp_path / 'new' / 'state'}\nmodel:\n  path: {yolox_nano}\n"
                 f"cameras:\n  - name: c\n    source: {video_dir / 'intel_car-detection.mp4'}\n")
    assert cli_main(["config", "validate", str(f)]) == 0, capsys.readouterr().err
    assert not (tmp_path / "new").exists()  # validate creates nothing


def test_schema_only_checks_the_file_alone(startup_cases, tmp_path, capsys):
    text, line, fragment = startup_cases["model_missing"]
    f = tmp_path / "m.yaml"
    f.write_text(text)
    assert cli_main(["config", "validate", "--schema-only", str(f)]) == 0
    assert cli_main(["config", "validate", str(f)]) == 2
    assert fragment in capsys.readouterr().err


def test_an_install_without_the_runtime_libraries_is_a_problem_not_a_traceback(
        startup_cases, tmp_path, capsys, monkeypatch):
    text, _, _ = startup_cases["file_source_missing"]
    f = tmp_path / "c.yaml"
    f.write_text(text)
    for mod in ("edge_agent.inference.cli", "edge_agent.capture"):
        monkeypatch.setitem(sys.modules, mod, None)  # importing it raises ImportError
    assert cli_main(["config", "validate", str(f)]) == 2
    err = capsys.readouterr().err
    assert f"{f}:4: model.path: cannot be checked:" in err and "[cpu] or [gpu] extra" in err
    assert f"{f}:5: cameras: cannot be checked:" in err and "Traceback" not in err


def test_validate_checks_the_model_run_opens_from_the_model_store(tmp_path, yolox_nano,
                                                                   video_dir, capsys):
    from edge_agent.update import startup

    def write(model: Path) -> Path:
        f = tmp_path / "c.yaml"
        f.write_text(f"state_dir: {tmp_path / 'state'}\nmodel:\n  path: {model}\ncameras:\n"
                     f"  - name: c\n    source: {video_dir / 'intel_car-detection.mp4'}\n")
        return f

    cfg = cfgmod.load(write(yolox_nano))
    running = startup.model_config(cfg, startup.open_store(cfg))  # the first start seeds the store
    f = write(tmp_path / "gone.onnx")  # model.path only seeds: run opens the store's version
    assert cli_main(["config", "validate", str(f)]) == 0, capsys.readouterr().err
    Path(running.path).write_bytes(b"broken")
    assert cli_main(["config", "validate", str(f)]) == 2
    assert f"{f}:3: model.path: the model store's version " in capsys.readouterr().err
