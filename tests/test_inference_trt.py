"""TensorRT backend and builder (marked `gpu`: skipped with the reason where TensorRT/CUDA are
absent). Plans are built here from small ONNX models, run, and compared with ONNX Runtime."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from inference_helpers import make_multihead

from edge_agent import cli
from edge_agent.config import ModelConfig
from edge_agent.inference import ModelError, PlanMismatchError, open_engine
from edge_agent.inference import manifest as mf

pytestmark = pytest.mark.gpu

# FP16 against FP32 ONNX Runtime on the raw YOLOX-nano output: objectness and class probabilities
# (0..1) may move by this much, raw box offsets (in grid cells, log-sizes) by the second.
FP16_PROB_ATOL = 0.03
FP16_BOX_ATOL = 0.15


def cfg(path, engine_dir, **kw) -> ModelConfig:
    base = dict(path=str(path), engine_dir=str(engine_dir), max_batch=4, providers=["cpu"])
    base.update(kw)
    return ModelConfig(**base)


def frames_for_multihead():
    return [np.full((128, 128, 3), 255, np.uint8), np.zeros((64, 64, 3), np.uint8)]


# FP16 stores the constant rows in half precision: boxes of up to 60 input px (x2 in the frame)
# move by a few hundredths of a pixel, scores by ~1e-3.
@pytest.mark.parametrize("precision,atol", [("fp32", 1e-4), ("fp16", 0.25)])
def test_multihead_plan_matches_onnxruntime(tmp_path, precision, atol):
    model = tmp_path / "mh.onnx"
    make_multihead(model)  # dynamic batch: the plan gets a 1..4 optimisation profile
    with open_engine(cfg(model, tmp_path, backend="tensorrt", precision=precision)) as trt_eng, \
            open_engine(cfg(model, tmp_path, backend="onnxruntime")) as ort_eng:
        assert trt_eng.backend_name.startswith("tensorrt:")
        assert trt_eng.native_batch is None and trt_eng.max_batch == 4
        frames = frames_for_multihead()
        got = trt_eng.infer(frames).detections
        want = ort_eng.infer(frames).detections
        for g, w in zip(got, want):
            for head in ("weapon", "crowd"):
                assert g[head].shape == w[head].shape
                np.testing.assert_allclose(g[head], w[head], atol=atol)
        # batch sizes inside the profile re-shape the context without reallocating
        for n in (1, 3, 4):
            assert len(trt_eng.infer(frames[:1] * n).detections) == n
    plans = list((tmp_path / "cache" / "plans").glob("*.plan"))
    assert len(plans) == 1
    side = json.loads(plans[0].with_suffix(".json").read_text())
    assert side["key"]["precision"] == precision and side["key"]["max_batch"] == 4


@pytest.mark.slow
def test_yolox_fp16_plan_against_onnxruntime(tmp_path, yolox_nano, video_dir):
    cap = cv2.VideoCapture(str(video_dir / "nvidia_Retail02_short.mp4"))
    frames = [cap.read()[1] for _ in range(3)]
    cap.release()
    with open_engine(cfg(yolox_nano, tmp_path, backend="tensorrt", precision="fp16")) as trt_eng, \
            open_engine(cfg(yolox_nano, tmp_path, backend="onnxruntime")) as ort_eng:
        assert trt_eng.native_batch == 1  # the export has a fixed batch of 1
        batch, _ = ort_eng._pre(frames[:1])
        raw_trt = trt_eng._run(batch.copy())["output"].astype(np.float64)
        raw_ort = ort_eng._run(batch.copy())["output"].astype(np.float64)
        prob_diff = np.abs(raw_trt[..., 4:] - raw_ort[..., 4:]).max()
        box_diff = np.abs(raw_trt[..., :4] - raw_ort[..., :4]).max()
        print(f"FP16 vs ONNX Runtime FP32: max abs diff probabilities {prob_diff:.4f}, "
              f"raw box terms {box_diff:.4f}")
        assert prob_diff < FP16_PROB_ATOL and box_diff < FP16_BOX_ATOL
        got = trt_eng.infer(frames).detections
        want = ort_eng.infer(frames).detections
        for g, w in zip(got, want):
            assert abs(len(g["crowd"]) - len(w["crowd"])) <= 1


def test_engine_runs_from_another_thread(tmp_path):
    model = tmp_path / "mh.onnx"
    make_multihead(model)
    eng = open_engine(cfg(model, tmp_path, backend="tensorrt", precision="fp32"))
    result = {}

    def work():
        try:
            result["dets"] = eng.infer(frames_for_multihead()).detections
        except Exception as exc:  # reported below
            result["error"] = exc

    t = threading.Thread(target=work)
    t.start()
    t.join()
    eng.close()
    eng.close()  # idempotent
    assert "error" not in result, result.get("error")
    assert len(result["dets"][0]["weapon"]) == 2


def test_plan_from_another_device_is_refused(tmp_path):
    model = tmp_path / "mh.onnx"
    make_multihead(model)
    open_engine(cfg(model, tmp_path, backend="tensorrt", precision="fp32")).close()
    (plan,) = (tmp_path / "cache" / "plans").glob("*.plan")
    side = plan.with_suffix(".json")
    data = json.loads(side.read_text())
    data["key"]["gpu_name"] = "Some Other GPU"
    side.write_text(json.dumps(data))
    with pytest.raises(PlanMismatchError, match="gpu_name"):
        open_engine(cfg(model, tmp_path, backend="tensorrt", precision="fp32"))


def test_parser_error_names_the_node(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from edge_agent.inference.build import build_plan

    node = helper.make_node("NoSuchOp", ["images"], ["output"], name="mystery_node",
                            domain="com.example")
    graph = helper.make_graph(
        [node], "broken",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 6])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                    helper.make_opsetid("com.example", 1)])
    path = tmp_path / "broken.onnx"
    onnx.save(model, str(path))
    m = mf.parse({"name": "broken", "version": "1", "sha256": mf.file_sha256(path),
                  "input": {"name": "images", "batch": 1, "height": 32, "width": 32},
                  "outputs": [{"name": "output", "decode": "boxes", "classes": ["x"]}],
                  "heads": {"x": {"output": "output"}}})
    with pytest.raises(ModelError, match="mystery_node"):
        build_plan(path, m, fp16=False, max_batch=1, progress=False)


def test_cli_build_then_inspect_lists_the_plan(tmp_path, capsys):
    model = tmp_path / "mh.onnx"
    make_multihead(model)
    argv = ["engine", "build", str(model), "--fp16", "--max-batch", "2", "--engine-dir",
            str(tmp_path), "--no-progress"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    plan = Path(out.split("plan", 1)[1].split()[0])
    assert plan.is_file() and plan.with_suffix(".json").is_file()
    assert cli.main(["engine", "inspect", str(model), "--engine-dir", str(tmp_path)]) == 0
    assert "fp16, max batch 2" in capsys.readouterr().out
    # a second build reuses the timing cache beside the plans
    assert list((tmp_path / "cache" / "timing").glob("*.cache"))
