"""The engine store without a GPU: cache keys, refusing mismatched or damaged plans, the CLI."""

from __future__ import annotations

import io
import json
import time
from dataclasses import replace
from pathlib import Path

import pytest

from edge_agent import cli
from edge_agent.inference import ModelError, PlanMismatchError
from edge_agent.inference.build import Spinner, progress_bar
from edge_agent.inference.engine import tensorrt_usable
from edge_agent.inference.plans import PlanKey, PlanStore

KEY = PlanKey(onnx_sha256="d39bee73564e338080378b0ad567fbb40e818b55bbfaf971de82a0267ed16b8a",
              trt_version="8.5.2.2", gpu_name="Orin", compute_capability="8.7",
              precision="fp16", max_batch=1)
REPO = Path(__file__).resolve().parent.parent
PLAN = b"\x00fake plan bytes: the store never parses them\x01" * 50


def test_key_digest_is_stable_and_covers_every_field():
    assert KEY.digest() == replace(KEY).digest()
    assert len(KEY.digest()) == 16
    variants = [replace(KEY, onnx_sha256="0" * 64), replace(KEY, trt_version="8.5.3.1"),
                replace(KEY, gpu_name="NVIDIA H100"), replace(KEY, compute_capability="9.0"),
                replace(KEY, precision="fp32"), replace(KEY, max_batch=4)]
    digests = {v.digest() for v in variants}
    assert len(digests) == len(variants) and KEY.digest() not in digests


def test_key_rejects_bad_values():
    with pytest.raises(ValueError, match="precision"):
        replace(KEY, precision="int8")
    with pytest.raises(ValueError, match="max_batch"):
        replace(KEY, max_batch=0)


def test_store_round_trip_and_layout(tmp_path):
    store = PlanStore(tmp_path)
    path = store.save(KEY, "yolox_nano_coco", PLAN, info={"build_s": 1.5})
    assert path.parent == tmp_path / "cache" / "plans"
    assert path.name == f"yolox_nano_coco-{KEY.digest()}.plan"
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["key"]["trt_version"] == "8.5.2.2" and side["plan_bytes"] == len(PLAN)
    assert store.find(KEY, "yolox_nano_coco") == path
    assert store.find(replace(KEY, max_batch=2), "yolox_nano_coco") is None
    assert store.load(path, KEY) == PLAN
    assert [p["plan"] for p in store.plans_for(KEY.onnx_sha256)] == [str(path)]
    assert store.timing_cache_path(KEY).name == "Orin-sm8.7-trt8.5.2.2.cache"
    assert not list(path.parent.glob("*.tmp*"))  # atomic writes leave nothing behind


@pytest.mark.parametrize("field,value", [
    ("trt_version", "8.5.3.1"),  # even a patch release differs: TensorRT refuses such plans
    ("gpu_name", "NVIDIA GeForce RTX 3060"),
    ("compute_capability", "8.6"),
    ("precision", "fp32"),
    ("max_batch", 4),
    ("onnx_sha256", "f" * 64),
])
def test_mismatched_plan_is_refused(tmp_path, field, value):
    store = PlanStore(tmp_path)
    path = store.save(KEY, "m", PLAN)
    device = replace(KEY, **{field: value})
    with pytest.raises(PlanMismatchError, match=f"{field}: plan has .* needs {value!r}"):
        store.load(path, device)


def test_plan_copied_under_another_name_is_still_refused(tmp_path):
    """The key check reads the sidecar, not the file name: renaming a plan does not help."""
    store = PlanStore(tmp_path)
    path = store.save(KEY, "m", PLAN)
    other = replace(KEY, gpu_name="Xavier", compute_capability="7.2")
    target = store.plan_path(other, "m")
    target.write_bytes(path.read_bytes())
    target.with_suffix(".json").write_text(path.with_suffix(".json").read_text())
    assert store.find(other, "m") == target
    with pytest.raises(PlanMismatchError, match="gpu_name"):
        store.load(target, other)


def test_truncated_or_unlabelled_plan_is_refused(tmp_path):
    store = PlanStore(tmp_path)
    path = store.save(KEY, "m", PLAN)
    path.write_bytes(PLAN[:100])
    with pytest.raises(ModelError, match="truncated or altered"):
        store.load(path, KEY)
    path.with_suffix(".json").unlink()
    with pytest.raises(ModelError, match="no sidecar"):
        store.load(path, KEY)
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(ModelError, match="unreadable"):
        store.load(path, KEY)
    path.with_suffix(".json").write_text(json.dumps({"key": {"onnx_sha256": "x"}}))
    with pytest.raises(ModelError, match="key lacks"):
        store.load(path, KEY)
    with pytest.raises(ModelError, match="empty plan"):
        store.save(KEY, "m", b"")


def test_progress_line_and_spinner():
    line = progress_bar("Building engine", 5, 10, time.monotonic(), width=10)
    assert "[#####.....] 5/10 00:00" in line and line.startswith("Building engine")
    assert "[##########] 10/10" in progress_bar("x", 12, 10, time.monotonic(), width=10)
    out = io.StringIO()
    with Spinner("building", out, interval=0.01):
        time.sleep(0.1)
    text = out.getvalue()
    assert "\rbuilding | 00:00" in text and text.endswith("building done in 00:00\n")


# --- the CLI ------------------------------------------------------------------------------------


def test_cli_inspect_prints_manifest_and_checks_graph(yolox_nano, capsys):
    assert cli.main(["engine", "inspect", str(yolox_nano)]) == 0
    out = capsys.readouterr().out
    assert "yolox_nano_coco 0.1.1rc0" in out and "head      crowd <- output: person" in out
    assert "graph out output [1, 3549, 85] float32" in out and "matches the manifest" in out


def test_cli_inspect_names_the_mismatch(tmp_path, yolox_nano, capsys):
    model = tmp_path / "m.onnx"
    model.write_bytes(yolox_nano.read_bytes())
    data = json.loads((REPO / "engines/manifests/yolox_nano_coco.json").read_text())
    data["input"]["width"] = 640
    model.with_suffix(".json").write_text(json.dumps(data))
    assert cli.main(["engine", "inspect", str(model)]) == 2
    err = capsys.readouterr().err
    assert "does not match manifest" in err and "axis W: 416 != 640" in err


def test_cli_bench_prints_latency_table(yolox_nano, capsys):
    argv = ["engine", "bench", str(yolox_nano), "--backend", "onnxruntime", "--iterations", "3",
            "--max-batch", "2", "--threads", "1"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "onnxruntime:CPUExecutionProvider" in out and "p50 ms" in out and "p99 ms" in out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [r[0] for r in rows] == ["1", "2"]
    assert all(float(r[1]) > 0 and float(r[-1]) > 0 for r in rows)


@pytest.mark.skipif(tensorrt_usable() is None, reason="TensorRT is usable here")
def test_cli_build_says_why_it_cannot_build_here(yolox_nano, tmp_path, capsys):
    argv = ["engine", "build", str(yolox_nano), "--fp16", "--engine-dir", str(tmp_path)]
    assert cli.main(argv) == 1
    assert "cannot build here" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()


@pytest.mark.skipif(tensorrt_usable() is None, reason="TensorRT is usable here")
def test_tensorrt_backend_unavailable_is_exit_1_not_bad_model(yolox_nano, tmp_path, capsys):
    from edge_agent.config import ModelConfig
    from edge_agent.inference import BackendUnavailableError, open_engine

    with pytest.raises(BackendUnavailableError, match="TensorRT is not installed"):
        open_engine(ModelConfig(path=str(yolox_nano), backend="tensorrt",
                                engine_dir=str(tmp_path)))
    argv = ["engine", "bench", str(yolox_nano), "--backend", "tensorrt", "--engine-dir",
            str(tmp_path)]
    assert cli.main(argv) == 1
    assert "cannot run here: TensorRT is not installed" in capsys.readouterr().err


# --- provisioning -------------------------------------------------------------------------------


def test_build_progress_reaches_a_callback_and_the_terminal_draws_it():
    from edge_agent.inference.build import BuildProgress, TerminalProgress

    assert BuildProgress("Building engine", 5, 10).fraction == 0.5
    out = io.StringIO()
    bar = TerminalProgress("building m", out)
    for step in range(0, 11, 5):  # TensorRT 10: every step of the phase
        bar(BuildProgress("Building engine", step, 10))
    bar(BuildProgress("building m", 1, 1, done=True))
    text = out.getvalue()
    assert "[" + "#" * 30 + "] 10/10" in text and text.endswith("\n")
    out = io.StringIO()
    spin = TerminalProgress("building m", out)  # TensorRT 8.x: only the start and the end
    spin(BuildProgress("building m", 0, 1))
    time.sleep(0.4)
    spin(BuildProgress("building m", 1, 1, done=True))
    assert out.getvalue().endswith("building m done in 00:00\n")


def test_provisioning_breaks_the_build_trt_import_cycle():
    import ast

    def imports(name):
        src = (REPO / "edge_agent" / "inference" / f"{name}.py").read_text()
        return {n.module for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom)}

    assert "edge_agent.inference.trt" not in imports("build")
    assert "edge_agent.inference.trt" not in imports("provision")
    assert "edge_agent.inference.build" not in imports("trt")  # only through provision
    assert "edge_agent.inference.provision" in imports("trt")


@pytest.mark.skipif(tensorrt_usable() is None, reason="TensorRT is usable here")
def test_ensure_plan_without_tensorrt_says_so(yolox_nano, tmp_path):
    from edge_agent.inference import BackendUnavailableError
    from edge_agent.inference import manifest as mf
    from edge_agent.inference.provision import ensure_plan

    m = mf.resolve(yolox_nano, None, str(REPO / "engines"))
    with pytest.raises(BackendUnavailableError, match="TensorRT is not installed"):
        ensure_plan(m, yolox_nano, engine_dir=tmp_path)
    assert not list(tmp_path.rglob("*.plan"))
