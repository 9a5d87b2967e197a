"""The multi-head model: data readers, losses, training, export (PyTorch CPU, small and fast)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edge_agent.model import data as D  # noqa: E402
from edge_agent.model import loss as L  # noqa: E402
from edge_agent.model import net as N  # noqa: E402
from edge_agent.model import onnxweights as W  # noqa: E402
from edge_agent.model.evaluate import average_precision, evaluate, match  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
HEADS = {"weapon": ["gun"], "crowd": ["person"], "plate": ["plate"]}


def _image(path: Path, w: int, h: int, boxes) -> None:
    img = np.full((h, w, 3), 90, np.uint8)
    for x1, y1, x2, y2, *_ in boxes:
        cv2.rectangle(img, (int(x1), int(y1)), (int(x2) - 1, int(y2) - 1), (20, 200, 240), -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)


def _items(tmp: Path):
    """Three images (one a negative) with boxes in pixels, classes 0/1."""
    specs = [("a", 96, 64, [[10, 12, 40, 30, 0], [50, 20, 90, 60, 1]]),
             ("b", 80, 80, [[0, 0, 20, 30, 1]]),
             ("c", 64, 48, [])]
    items = []
    for name, w, h, boxes in specs:
        p = tmp / "images" / f"{name}.jpg"
        _image(p, w, h, boxes)
        items.append((p, (w, h), np.array(boxes, np.float32).reshape(-1, 5)))
    return items


# --- formats ------------------------------------------------------------------------------------


def test_three_formats_round_trip(tmp_path):
    items = _items(tmp_path)
    classes = ["gun", "knife"]
    D.write_yolo(items, tmp_path / "images", tmp_path / "labels")
    D.write_voc(items, tmp_path / "annots", classes)
    D.write_coco(items, tmp_path / "ann.json", classes)
    yolo = D.read_yolo(tmp_path / "images", tmp_path / "labels", classes)
    voc = D.read_voc(tmp_path / "images", tmp_path / "annots", classes)
    coco = D.read_coco(tmp_path / "images", tmp_path / "ann.json", classes)
    for got in (yolo, voc, coco):
        assert [Path(p).name for p, _, _ in got] == ["a.jpg", "b.jpg", "c.jpg"]
        for (_, size, b), (_, size0, b0) in zip(got, items):
            assert size == size0
            np.testing.assert_allclose(b, b0, atol=0.01)
    assert len(yolo[2][2]) == 0  # the empty label file is a negative


def _yolo_set(tmp_path, lines="0 0.5 0.5 0.2 0.2\n"):
    img = tmp_path / "images" / "x.jpg"
    _image(img, 64, 48, [])
    lab = tmp_path / "labels"
    lab.mkdir()
    (lab / "x.txt").write_text(lines)
    return tmp_path / "images", lab


@pytest.mark.parametrize("lines, message", [
    ("0 1.2 0.5 0.3 0.3\n", "outside the 64x48 image"),
    ("3 0.5 0.5 0.2 0.2\n", "unknown class id 3"),
    ("0 0.5 0.5\n", "expected 'class cx cy w h'"),
])
def test_bad_yolo_labels_name_the_file(tmp_path, lines, message):
    images, labels = _yolo_set(tmp_path, lines)
    with pytest.raises(D.DataError, match=message) as exc:
        D.read_yolo(images, labels, ["gun"])
    assert str(labels / "x.txt") in str(exc.value)


def test_missing_label_file_is_an_error_but_an_empty_one_a_negative(tmp_path):
    images, labels = _yolo_set(tmp_path, "")
    assert len(D.read_yolo(images, labels, ["gun"])[0][2]) == 0
    (labels / "x.txt").unlink()
    with pytest.raises(D.DataError, match="label file missing") as exc:
        D.read_yolo(images, labels, ["gun"])
    assert "x.txt" in str(exc.value)


def test_missing_and_corrupt_images_name_the_file(tmp_path):
    images, labels = _yolo_set(tmp_path)
    (labels / "ghost.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    with pytest.raises(D.DataError, match="ghost.txt: label file without an image"):
        D.read_yolo(images, labels, ["gun"])
    (labels / "ghost.txt").unlink()
    (images / "x.jpg").write_bytes(b"\xff\xd8not a jpeg at all")
    with pytest.raises(D.DataError, match="x.jpg: image does not decode"):
        D.read_yolo(images, labels, ["gun"])


def test_voc_unknown_class_and_coco_missing_image(tmp_path):
    items = _items(tmp_path)
    D.write_voc(items, tmp_path / "annots", ["gun", "rifle"])
    with pytest.raises(D.DataError, match=r"a.xml: unknown class 'rifle'"):
        D.read_voc(tmp_path / "images", tmp_path / "annots", ["gun", "knife"])
    D.write_coco(items, tmp_path / "ann.json", ["gun", "knife"])
    (tmp_path / "images" / "b.jpg").unlink()
    with pytest.raises(D.DataError, match="b.jpg: image file missing"):
        D.read_coco(tmp_path / "images", tmp_path / "ann.json", ["gun", "knife"])


# --- evaluator ------------------------------------------------------------------------------------


def test_ap_hand_computed_case():
    # 2 gt boxes; 3 detections by score: TP, FP, TP -> precision 1, 1/2, 2/3 at recall .5, .5, 1.
    # Monotone envelope: p = 1 for r <= .5, 2/3 for .5 < r <= 1. 101 points: 51 at 1, 50 at 2/3.
    gt = [np.array([[0, 0, 10, 10, 0], [20, 20, 30, 30, 0]], np.float32)]
    det = [np.array([[0, 0, 10, 10, .9, 0], [50, 50, 60, 60, .8, 0], [20, 20, 30, 31, .7, 0]],
                    np.float32)]
    _, tps, n = match(det, gt, 0, 0.5)
    assert list(tps) == [True, False, True] and n == 2
    assert average_precision(tps, n) == pytest.approx((51 + 50 * 2 / 3) / 101)
    res = evaluate(det, gt, 1)
    # At IoU >= 0.95 the third box (IoU 10/11 = 0.909) no longer matches: AP 51/101 there.
    assert res["ap50"] == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert res["ap50_95"] < res["ap50"]
    assert evaluate([np.zeros((0, 6))], gt, 1)["ap50"] == 0.0


# --- network, losses, gradients ------------------------------------------------------------------


def test_coco_weights_reproduce_the_onnx_model(yolox_nano):
    import onnxruntime as ort

    ref = W.coco_reference(yolox_nano).eval()
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (1, 3, 416, 416)).astype(np.float32)
    want = ort.InferenceSession(str(yolox_nano), providers=["CPUExecutionProvider"]).run(
        None, {"images": x})[0]
    with torch.no_grad():
        rows = N.flatten(ref.head(ref.body(torch.from_numpy(x)))).numpy()
    rows[..., 4:] = 1 / (1 + np.exp(-rows[..., 4:]))
    assert np.abs(rows - want).max() < 1e-3
    net = N.MultiHeadNet(HEADS)
    rep = W.load_coco(net, yolox_nano, {"crowd": [0]})
    assert not [k for k in rep.missing if "crowd" in k]  # the crowd head is all COCO
    assert all("cls_preds" in k for k in rep.missing)  # new heads: only their classifiers


def _targets(h, w):
    plate = np.array([[10, 8, 40, 20, 0]], np.float32)
    gun = np.array([[30, 10, 60, 40, 0]], np.float32)
    # image 0 labels plate (weapon unlabelled), image 1 labels weapon (plate unlabelled)
    boxes = {"weapon": [None, gun], "plate": [plate, None], "crowd": [None, None]}
    ignore = {k: [np.zeros((0, 4), np.float32)] * 2 for k in boxes}
    return L.to_tensors(boxes, ignore)


LIGHT = {"weapon": N.HeadSpec(32, 1), "plate": N.HeadSpec(48, 0)}


def test_light_heads_load_the_coco_head_cut_to_their_shape(yolox_nano):
    ref = W.coco_reference(yolox_nano)
    net = N.MultiHeadNet(HEADS, LIGHT)
    rep = W.load_coco(net, yolox_nano, {"crowd": [0]})
    assert all("cls_preds" in k and "crowd" not in k for k in rep.missing)
    w = net.heads["weapon"]
    assert len(w.cls_convs[0]) == 1 and len(net.heads["plate"].reg_convs[2]) == 0
    assert len(net.heads["crowd"].cls_convs[1]) == 2  # not listed: the COCO head
    # the first 32 output channels of COCO's stem, its first branch conv cut to 32 x 32
    assert torch.equal(w.stems[1].conv.weight, ref.head.stems[1].conv.weight[:32])
    assert torch.equal(w.reg_convs[0][0].pconv.conv.weight,
                       ref.head.reg_convs[0][0].pconv.conv.weight[:32, :32])
    assert torch.equal(w.reg_preds[2].weight, ref.head.reg_preds[2].weight[:, :32])
    assert net.heads["plate"].obj_preds[0].weight.shape[1] == 48
    # fewer parameters than a COCO head
    size = {h: sum(p.numel() for p in m.parameters()) for h, m in net.heads.items()}
    assert size["weapon"] < size["crowd"] / 2 and size["plate"] < size["crowd"] / 2


@pytest.mark.parametrize("width, convs", [(4, 0), (65, 1), (32, 3), (32.0, 1)])
def test_bad_head_spec_is_refused(width, convs):
    with pytest.raises(ValueError, match="width|convs"):
        N.HeadSpec(width, convs)
    with pytest.raises(ValueError, match="unknown heads"):
        N.MultiHeadNet(HEADS, {"knife": N.HeadSpec(32, 1)})


@pytest.mark.parametrize("specs", [None, LIGHT], ids=["coco-heads", "light-heads"])
def test_head_gets_zero_gradient_from_a_sample_that_does_not_label_it(specs):
    torch.manual_seed(0)
    net = N.MultiHeadNet(HEADS, specs)
    h, w = 64, 96
    x = (torch.rand(2, 3, h, w) * 255).requires_grad_(True)
    tb, ti = _targets(h, w)
    pts, steps = N.grid(h, w)
    maps = net(x)
    weapon, _ = L.head_loss(maps["weapon"], tb["weapon"], ti["weapon"], pts, steps)
    weapon.backward()
    assert x.grad[0].abs().max().item() == 0.0  # image 0 does not label weapon
    assert x.grad[1].abs().max().item() > 0.0
    # Only image 0 in the batch: the weapon head's parameters get exactly nothing.
    net.zero_grad(set_to_none=True)
    maps = net(x[:1].detach())
    loss, _ = L.head_loss(maps["weapon"], tb["weapon"][:1], ti["weapon"][:1], pts, steps)
    loss.backward()
    grads = [p.grad for p in net.heads["weapon"].parameters()]
    assert all(g is None or g.abs().max().item() == 0.0 for g in grads)
    # ...while a verified negative (empty boxes) does train objectness
    net.zero_grad(set_to_none=True)
    maps = net(x[:1].detach())
    neg, _ = L.head_loss(maps["weapon"], [torch.zeros(0, 5)], ti["weapon"][:1], pts, steps)
    neg.backward()
    assert net.heads["weapon"].obj_preds[0].weight.grad.abs().max().item() > 0


def test_ignore_region_removes_objectness_loss():
    torch.manual_seed(0)
    net = N.MultiHeadNet({"crowd": ["person"]})
    h, w = 64, 64
    maps = net(torch.rand(1, 3, h, w) * 255)
    pts, steps = N.grid(h, w)
    full, _ = L.head_loss(maps["crowd"], [torch.zeros(0, 5)], [torch.zeros(0, 4)], pts, steps)
    part, _ = L.head_loss(maps["crowd"], [torch.zeros(0, 5)],
                          [torch.tensor([[0.0, 0.0, 64.0, 32.0]])], pts, steps)
    assert 0 < part.item() < full.item()


# --- training and export end to end ---------------------------------------------------------------


def _tiny_config(tmp_path, yolox_nano):
    from edge_agent.model.train import TrainConfig

    items = _items(tmp_path / "guns")
    D.write_yolo(items, tmp_path / "guns" / "images", tmp_path / "guns" / "labels")
    plates = _items(tmp_path / "plates")
    D.write_voc(plates, tmp_path / "plates" / "annots", ["license-plate", "x"])
    guns = {"name": "guns", "format": "yolo", "images": str(tmp_path / "guns" / "images"),
            "labels": str(tmp_path / "guns" / "labels"), "classes": ["gun", "knife"],
            "map": {"knife": "gun"}, "head": "weapon", "negatives": ["plate"]}
    pl = {"name": "plates", "format": "voc", "images": str(tmp_path / "plates" / "images"),
          "annots": str(tmp_path / "plates" / "annots"), "head": "plate",
          "map": {"license-plate": "plate", "x": "plate"}, "negatives": ["weapon"]}
    return TrainConfig.from_mapping({
        "name": "tiny", "version": "0.0.1", "heads": HEADS, "train": [guns, pl],
        "val": [guns, pl], "input": {"height": 64, "width": 96},
        "init": {"weights": str(yolox_nano), "classes": {"crowd": [0]}},
        "teacher": {"model": str(yolox_nano)}, "out_dir": str(tmp_path / "run"), "threads": 1,
        "batch": 3, "stage_a": {"epochs": 1, "iters": 2, "lr": 1e-3,
                                "freeze": ["body", "heads.crowd"]},
        "stage_b": {"epochs": 1, "iters": 2, "lr": 1e-4},
        "distill": {"head": "crowd", "weight": 1.0}}, "the tiny test config")


def test_tiny_model_trains_resumes_and_exports(tmp_path, yolox_nano):
    from edge_agent.config import ModelConfig
    from edge_agent.inference.engine import open_engine
    from edge_agent.model import export as E
    from edge_agent.model import train as T

    cfg = _tiny_config(tmp_path, yolox_nano)
    cfg.stage_b.epochs = 0
    rec = T.run(cfg, progress=False)
    assert rec["epoch"] == 1 and set(rec["loss"]) == {"weapon", "plate"}
    assert all(np.isfinite(v) for v in rec["loss"].values())
    assert set(rec["val"]) == {"weapon", "crowd", "plate"}
    frozen = torch.load(tmp_path / "run" / "last.pt", weights_only=False)["model"]
    assert frozen["heads.weapon.stems.0.conv.weight"].shape[0] == 32  # the light default
    assert "heads.weapon.cls_convs.0.1.dconv.conv.weight" not in frozen
    assert "heads.crowd.cls_convs.0.1.dconv.conv.weight" in frozen
    cfg.stage_b.epochs = 1  # --resume continues with the next epoch (stage B)
    rec = T.run(cfg, resume=True, progress=False)
    assert rec["epoch"] == 2 and rec["stage"] == "B" and "crowd" in rec["loss"]
    assert rec["loss"]["distill"] > 0  # the crowd head is pulled towards the COCO model
    after = torch.load(tmp_path / "run" / "last.pt", weights_only=False)["model"]
    assert not torch.equal(frozen["body.stem.conv.conv.weight"],
                           after["body.stem.conv.conv.weight"])  # stage B moved the body
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2]

    onnx_path = tmp_path / "tiny.onnx"
    extra = E.export(tmp_path / "run" / "last.pt", onnx_path)
    diff = extra["checks"]["ort_vs_torch_max_abs_diff"]
    assert set(diff) == {"weapon", "crowd", "plate"}
    assert all(d["scores"] < 1e-4 and d["boxes_px"] < 0.1 for d in diff.values())
    assert set(extra["checks"]["fp16"]["ap50_drop"]) == {"weapon", "crowd", "plate"}
    mc = ModelConfig(path=str(onnx_path), backend="onnxruntime", providers=["cpu"], max_batch=2)
    with open_engine(mc) as eng:
        assert eng.manifest.heads == HEADS and eng.manifest.input.batch is None
        res = eng.infer([np.zeros((48, 64, 3), np.uint8), np.zeros((720, 1280, 3), np.uint8)])
        assert len(res.detections) == 2 and set(res.detections[0]) == set(HEADS)


def test_head_design_config_defaults_and_errors(tmp_path):
    from edge_agent.model.train import TrainConfig, TrainConfigError

    base = ("name: x\nversion: 1\nheads: {weapon: [gun], crowd: [person], plate: [plate]}\n"
            "init: {classes: {crowd: [0]}}\ntrain: []\nval: []\n")
    f = tmp_path / "t.yaml"
    f.write_text(base)
    specs = TrainConfig.load(f).head_specs()
    # crowd takes a COCO classifier: the full COCO head; new heads: the light default
    assert specs == {"weapon": N.HeadSpec(32, 1), "crowd": N.HeadSpec(64, 2),
                     "plate": N.HeadSpec(32, 1)}
    f.write_text(base + "head_design: {plate: {width: 64}, crowd: {convs: 1}}\n")
    specs = TrainConfig.load(f).head_specs()
    assert specs["plate"] == N.HeadSpec(64, 1) and specs["crowd"] == N.HeadSpec(64, 1)
    for bad, msg in [("{knife: {width: 32}}", "head_design: 'knife' is not a head"),
                     ("{plate: {width: 128}}", "head_design.plate.width: must be an integer "
                                               "in 8..64"),
                     ("{plate: {width: wide}}", "head_design.plate.width: expected an integer"),
                     ("{plate: {convs: 3}}", "head_design.plate.convs: must be 0, 1 or 2"),
                     ("{plate: {depth: 1}}", "head_design.plate.depth: unknown key"),
                     ("[32, 1]", "head_design: expected a mapping")]:
        f.write_text(base + f"head_design: {bad}\n")
        with pytest.raises(TrainConfigError, match=f"^{f}: {msg}"):
            TrainConfig.load(f)


def test_init_checkpoint_starts_from_an_earlier_run_and_bad_ones_are_named(tmp_path):
    from edge_agent.model.train import TrainConfig, build_net

    cfg = TrainConfig.load(REPO / "configs" / "train.yaml")
    cfg.init.weights, cfg.init.heads_from = None, None
    earlier = build_net(cfg, load_weights=False)
    torch.save({"model": earlier.state_dict(), "epoch": 2}, tmp_path / "last.pt")
    cfg.init.checkpoint = str(tmp_path / "last.pt")
    net = build_net(cfg)
    for (k, a), b in zip(earlier.state_dict().items(), net.state_dict().values()):
        assert torch.equal(a, b), k
    torch.save({"epoch": 0}, tmp_path / "other.pt")
    other = N.MultiHeadNet({"weapon": ["gun"]})
    torch.save({"model": other.state_dict(), "epoch": 0}, tmp_path / "design.pt")
    for name, msg in (("missing.pt", "no such file"), ("other.pt", "not a training checkpoint"),
                      ("design.pt", "another head design")):
        cfg.init.checkpoint = str(tmp_path / name)
        with pytest.raises(ValueError, match=msg):
            build_net(cfg)


def test_train_config_builds_the_shipped_architecture():
    """`make model` trains what is shipped: configs/train.yaml's heads and head designs give the
    conv weights of engines/models/edge_multihead.onnx, shape for shape."""
    import onnx
    from onnx import numpy_helper

    from edge_agent.model.train import TrainConfig, build_net

    cfg = TrainConfig.load(REPO / "configs" / "train.yaml")
    assert cfg.head_specs()["crowd"] == N.COCO_HEAD  # crowd is always the COCO person head
    net = build_net(cfg, load_weights=False)
    ours = sorted(tuple(m.weight.shape) for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    model = onnx.load(str(REPO / "engines" / "models" / "edge_multihead.onnx"))
    inits = {t.name: t for t in model.graph.initializer}
    shipped = sorted(tuple(numpy_helper.to_array(inits[n.input[1]]).shape)
                     for n in model.graph.node if n.op_type == "Conv")
    assert ours == shipped
    nc = TrainConfig.load(REPO / "configs" / "train-nc.yaml")
    assert nc.head_specs() == cfg.head_specs()  # the NC variant: same network, more data
    assert [s["name"] for s in nc.train] == [s["name"] for s in cfg.train][:3] + ["cctv",
                                                                               "people"]


@pytest.mark.parametrize("nc", ["", "NC=1"])
def test_make_model_stage_two_reads_what_stage_one_exports(nc):
    """Stage 1 (three COCO-sized heads) exports the file stage 2 copies heads from and distils."""
    import subprocess

    from edge_agent.model.train import TrainConfig

    cmds = subprocess.run(["make", "-n", "model"] + ([nc] if nc else []), cwd=REPO, check=True,
                          capture_output=True, text=True).stdout
    configs = [REPO / c for c in re.findall(r"train --config (\S+)", cmds)]
    stage1_onnx = re.findall(r"-o (\S+)", cmds)[0]
    full, light = (TrainConfig.load(c) for c in configs)
    assert set(full.head_specs().values()) == {N.COCO_HEAD}
    hf = light.init.heads_from
    assert hf is not None and (hf.model, hf.heads) == (stage1_onnx, ["crowd", "plate"])
    assert light.distill is not None
    assert light.distill.teacher == stage1_onnx and light.distill.head == "weapon"
    assert light.stage_a.freeze == ["body", "heads.crowd", "heads.plate"]
    assert full.train == light.train and full.val == light.val  # the same data in both stages


def test_train_cli_errors(tmp_path, capsys):
    from edge_agent.cli import main

    bad = tmp_path / "t.yaml"
    bad.write_text("name: x\nversion: 1\nheads: {a: [b]}\ntrain: []\nval: []\nbogus: 1\n")
    assert main(["train", "--config", str(bad)]) == 2
    assert f"{bad}: bogus: unknown key" in capsys.readouterr().err
    bad.write_text("name: x\nversion: 1\nheads: {a: [b]}\ntrain: []\nval: []\n"
                   "eval: {nms_iou: high}\n")
    assert main(["train", "--config", str(bad)]) == 2
    assert f"{bad}: eval.nms_iou: expected a number, got 'high'" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "none.pt"), "-o", str(tmp_path / "m.onnx")]) == 2


def test_stage_two_copies_heads_and_distils_from_an_export(tmp_path, yolox_nano):
    """Stage 2 of `make model`: heads copied from stage 1's export stay exactly as they were,
    and the light weapon head learns from stage 1's weapon head run on the same features."""
    from edge_agent.model import export as E
    from edge_agent.model import train as T

    stage1 = N.MultiHeadNet(HEADS)
    W.load_coco(stage1, yolox_nano, {"crowd": [0]})
    with torch.no_grad():  # a "trained" plate head: anything but its COCO start
        stage1.heads.plate.cls_preds[0].bias.fill_(1.5)
    path = tmp_path / "stage1.onnx"
    E.to_onnx(stage1.eval(), 64, 96, path)

    cfg = _tiny_config(tmp_path, yolox_nano)
    cfg.head_design = {"weapon": T.HeadDesign(16, 1), "plate": T.HeadDesign(64, 2)}
    cfg.init.heads_from = T.HeadsFrom(str(path), ["crowd", "plate"])
    cfg.stage_a = T.Stage(1, 2, 1e-3, ["body", "heads.crowd", "heads.plate"])
    cfg.stage_b.epochs = 0
    cfg.distill = T.DistillConfig("weapon", 1.0, teacher=str(path))
    rec = T.run(cfg, progress=False)
    assert set(rec["loss"]) == {"weapon", "distill"} and rec["loss"]["distill"] > 0
    after = torch.load(tmp_path / "run" / "last.pt", weights_only=False)["model"]
    for k, v in stage1.state_dict().items():
        if k.startswith(("heads.plate.", "heads.crowd.")):
            assert torch.equal(after[k], v), k
    assert after["heads.weapon.stems.0.conv.weight"].shape[0] == 16

    # the teacher is stage 1's weapon head, exactly, on our features
    student = T.build_net(cfg)
    teacher = T.distill_teacher(cfg, student)
    x = torch.rand(1, 3, 64, 96) * 255
    with torch.no_grad():
        feats = student.body(x)
        for got, want in zip(teacher(x, feats, "weapon"),
                             stage1.heads.weapon(stage1.body(x))):
            assert torch.allclose(got, want, atol=1e-5)


def test_heads_from_and_teacher_errors_name_the_tensor(tmp_path, yolox_nano):
    from edge_agent.model import export as E

    src = N.MultiHeadNet(HEADS)
    path = tmp_path / "m.onnx"
    E.to_onnx(src.eval(), 64, 64, path)
    light = N.MultiHeadNet(HEADS, {"weapon": N.HeadSpec(32, 1)})
    with pytest.raises(ValueError, match=r"heads\.weapon\.stems\.0\.conv\.weight is "
                                         r"\[64, 64, 1, 1\].*needs \[32, 64, 1, 1\]"):
        W.load_heads(light, path, ["weapon"])
    with pytest.raises(ValueError, match="'knife' is not a head"):
        W.load_heads(light, path, ["knife"])
    with pytest.raises(ValueError, match="its body differs from ours at body.stem"):
        W.exported_heads(path, ["weapon"], W.coco_reference(yolox_nano).body)
    with pytest.raises(ValueError, match="no head 'weapon'"):  # the COCO model: one head
        W.exported_heads(yolox_nano, ["weapon"], src.body)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(ValueError, match="bad.onnx: cannot read"):
        W.exported_net(bad)


def test_train_config_base_file(tmp_path):
    from edge_agent.model.train import TrainConfig, TrainConfigError

    (tmp_path / "one.yaml").write_text(
        "name: one\nversion: 1\nheads: {weapon: [gun]}\ntrain: []\nval: []\nbatch: 4\n")
    (tmp_path / "two.yaml").write_text("base: one.yaml\nname: two\nbatch: 2\n")
    cfg = TrainConfig.load(tmp_path / "two.yaml")
    assert (cfg.name, cfg.batch, cfg.heads) == ("two", 2, {"weapon": ["gun"]})
    (tmp_path / "loop.yaml").write_text("base: loop2.yaml\n")
    (tmp_path / "loop2.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(TrainConfigError, match="loop2.yaml: base: loop.yaml includes itself"):
        TrainConfig.load(tmp_path / "loop.yaml")
    (tmp_path / "gone.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(TrainConfigError, match="missing.yaml: cannot read"):
        TrainConfig.load(tmp_path / "gone.yaml")


def test_weapon_adapter_starts_as_identity_exports_and_loads_back(tmp_path, yolox_nano):
    from edge_agent.model import export as E

    specs = {"weapon": N.HeadSpec(32, 1, 24), "plate": N.HeadSpec(64, 2)}
    net = N.MultiHeadNet(HEADS, specs)
    W.load_coco(net, yolox_nano, {"crowd": [0]})
    plain = N.MultiHeadNet(HEADS, {"weapon": N.HeadSpec(32, 1), "plate": N.HeadSpec(64, 2)})
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if "adapter" not in k})
    x = torch.rand(1, 3, 64, 96) * 255
    with torch.no_grad():  # an untrained adapter adds zero: the head is the plain one
        for a, b in zip(net(x)["weapon"], plain(x)["weapon"]):
            assert torch.equal(a, b)
        net.heads.weapon.adapter.out.weight.normal_(0, 0.05)  # "trained"
    adapter_params = sum(p.numel() for p in net.heads.weapon.adapter.parameters())
    assert adapter_params == 64 * 24 + 24 + 24 * 9 + 24 + 24 * 24 + 24 + 24 * 64 + 64
    path = tmp_path / "a.onnx"
    E.to_onnx(net.eval(), 64, 96, path)
    back = W.exported_net(path)
    assert back.heads["weapon"].spec == N.HeadSpec(32, 1, 24)
    assert back.heads["crowd"].adapter is None
    with torch.no_grad():
        for a, b in zip(net(x)["weapon"], back(x)["weapon"]):
            assert torch.allclose(a, b, atol=1e-4)
    with pytest.raises(ValueError, match="adapter"):
        N.HeadSpec(32, 1, -1)


def test_paste_composites_small_guns_into_frames_and_caches_them(tmp_path):
    from edge_agent.model import synth

    obj = tmp_path / "gun.jpg"
    img = np.full((200, 300, 3), 200, np.uint8)
    img[80:120, 100:180] = 20  # the "gun", 80 x 40
    cv2.imwrite(str(obj), img)
    bg = tmp_path / "bg.jpg"
    cv2.imwrite(str(bg), np.full((432, 768, 3), 90, np.uint8))
    objects = [(obj, (300, 200), np.array([[100, 80, 180, 120, 0]], np.float32))]
    recipe = synth.PasteRecipe(count=5, gun_px=(10.0, 10.0), per_image=(2, 2), decoys=(1, 1),
                               blur=(0.0, 0.0), grey=0.0)
    items = synth.build(objects, [bg], recipe, tmp_path / "out")
    assert len(items) == 5
    for path, size, boxes in items:
        assert size == (416, 234) and cv2.imread(str(path)).shape == (234, 416, 3)
        assert len(boxes) == 2
        long_side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        assert np.allclose(long_side, 10, atol=1.0)  # 10 px at the model's input
        assert (boxes[:, :4] >= 0).all() and (boxes[:, 2] <= 416).all()
        x1, y1, x2, y2 = boxes[0, :4].round().astype(int)  # the dark gun is where the box is
        assert cv2.imread(str(path))[y1 + 1:y2 - 1, x1 + 1:x2 - 1].mean() < 60
    stamp = items[0][0].stat().st_mtime_ns
    again = synth.build(objects, [bg], recipe, tmp_path / "out")  # same recipe: reused
    assert again[0][0].stat().st_mtime_ns == stamp
    assert all(np.array_equal(a[2], b[2]) for a, b in zip(items, again))
    with pytest.raises(D.DataError, match="no object image has a gun"):
        synth.build([(obj, (300, 200), np.zeros((0, 5), np.float32))], [bg], recipe, tmp_path)


def test_paste_in_hand_puts_each_gun_at_a_persons_side_scaled_to_its_height(tmp_path):
    """``place: hand``: the gun's box centre is at a side of a person's box at hand height, its
    longer side the person's height x gun_of_person; frames without a tall person are unused."""
    from edge_agent.model import synth

    obj = tmp_path / "gun.jpg"
    img = np.full((200, 300, 3), 200, np.uint8)
    img[80:120, 100:180] = 20
    cv2.imwrite(str(obj), img)
    objects = [(obj, (300, 200), np.array([[100, 80, 180, 120, 0]], np.float32))]
    bg, empty = tmp_path / "bg.jpg", tmp_path / "empty.jpg"
    for f in (bg, empty):
        cv2.imwrite(str(f), np.full((432, 768, 3), 90, np.uint8))
    # one person 200 px tall in the 768-wide frame: 108 px at the 416 input (scale 416 / 768)
    person = np.array([[300, 100, 380, 300]], np.float32)
    persons = {str(bg): person, str(empty): np.array([[10, 10, 20, 40]], np.float32)}
    recipe = synth.PasteRecipe(count=6, per_image=(1, 1), decoys=(0, 0), blur=(0.0, 0.0),
                               grey=0.0, context=0.3, place="hand", gun_of_person=(0.1, 0.1))
    items = synth.build(objects, [bg, empty], recipe, tmp_path / "out", persons)
    r = 416 / 768
    px1, py1, px2, py2 = person[0] * r
    for _, _, boxes in items:
        assert len(boxes) == 1
        x1, y1, x2, y2 = boxes[0, :4]
        assert max(x2 - x1, y2 - y1) == pytest.approx(0.1 * (py2 - py1), abs=1.0)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        assert py1 + 0.35 * (py2 - py1) <= cy <= py1 + 0.7 * (py2 - py1)
        near = min(abs(cx - px1), abs(cx - px2))
        assert near <= 0.2 * (px2 - px1) + (x2 - x1)
    with pytest.raises(D.DataError, match="carrier"):
        synth.build(objects, [empty], recipe, tmp_path / "out2", persons)
    with pytest.raises(D.DataError, match="person boxes"):
        synth.build(objects, [bg], recipe, tmp_path / "out3")
    with pytest.raises(TypeError, match="place"):
        synth.PasteRecipe(place="wall")


def test_distillation_counts_only_on_the_named_sources():
    from edge_agent.model.train import DistillConfig, distill_mask

    samples = [D.Sample(Path(f"{i}.jpg"), src, (8, 8)) for i, src in
               enumerate(["ugr", "paste", "plates", "paste"])]
    assert distill_mask(DistillConfig("weapon"), samples) is None
    got = distill_mask(DistillConfig("weapon", sources=["ugr", "plates"]), samples)
    assert got.tolist() == [True, False, True, False]


def test_fine_path_starts_as_identity_exports_and_loads_back(tmp_path, yolox_nano):
    from edge_agent.model import export as E

    net = N.MultiHeadNet(HEADS, {"weapon": N.HeadSpec(32, 1, 0, 16)})
    W.load_coco(net, yolox_nano, {"crowd": [0]})
    plain = N.MultiHeadNet(HEADS, {"weapon": N.HeadSpec(32, 1)})
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if ".fine." not in k})
    x = torch.rand(1, 3, 64, 96) * 255
    with torch.no_grad():  # an untrained path adds zero: the head is the plain one
        for a, b in zip(net(x)["weapon"], plain(x)["weapon"]):
            assert torch.equal(a, b)
        net.heads.weapon.fine.out.weight.normal_(0, 0.05)  # "trained": the stride-8 map moves
        moved = [not torch.equal(a, b) for a, b in zip(net(x)["weapon"], plain(x)["weapon"])]
    assert moved == [True, False, False]  # only the stride-8 level sees the fine path
    path = tmp_path / "f.onnx"
    E.to_onnx(net.eval(), 64, 96, path)
    back = W.exported_net(path)
    assert back.heads["weapon"].spec == N.HeadSpec(32, 1, 0, 16)
    assert back.heads["crowd"].fine is None
    with torch.no_grad():
        for a, b in zip(net(x)["weapon"], back(x)["weapon"]):
            assert torch.allclose(a, b, atol=1e-4)
    with pytest.raises(ValueError, match="fine"):
        N.HeadSpec(32, 1, 0, 200)


def _yolo_source(tmp_path):
    """A YOLO source of ``_items`` (guns and knives mapped to the weapon head) and its heads."""
    D.write_yolo(_items(tmp_path), tmp_path / "images", tmp_path / "labels")
    src = {"name": "s", "format": "yolo", "images": str(tmp_path / "images"),
           "labels": str(tmp_path / "labels"), "classes": ["gun", "knife"], "head": "weapon",
           "map": {"knife": "gun"}}
    return src, {"weapon": ["gun"]}


def test_zoom_enlarges_a_source_and_bad_zoom_or_tiles_are_named(tmp_path):
    from edge_agent.model import sources
    from edge_agent.model.trainconfig import Augment

    src, heads = _yolo_source(tmp_path)
    plain = sources.build([src], heads)
    zoomed = sources.build([{**src, "zoom": [2.0, 2.0], "tiles": 2}], heads)
    assert plain[0].zoom == (1.0, 1.0) and plain[0].tiles == 1
    assert zoomed[0].zoom == (2.0, 2.0) and zoomed[0].tiles == 2
    still = Augment(scale=(1.0, 1.0), translate=0.0, flip=0.0, hsv=(0.0, 0.0, 0.0))
    rng = random.Random(0)
    scales = [D._random_matrix(smp[0].size, (128, 128), still, rng, smp[0].zoom)[0][0, 0]
              for smp in (plain, zoomed)]
    assert scales[1] == pytest.approx(2 * scales[0])
    for bad, key in (({"zoom": [0, 2]}, "zoom"), ({"zoom": [3, 2]}, "zoom"),
                     ({"tiles": 0}, "tiles")):
        with pytest.raises(D.DataError, match=key):
            sources.build([{**src, **bad}], heads)


def test_boxed_keeps_the_images_with_or_without_a_box(tmp_path):
    from edge_agent.model import sources

    src, heads = _yolo_source(tmp_path)
    names = {flag: sorted(s.image.stem for s in sources.build([{**src, "boxed": flag}], heads))
             for flag in (True, False)}
    assert names == {True: ["a", "b"], False: ["c"]}
    with pytest.raises(D.DataError, match="boxed"):
        sources.build([{**src, "boxed": "yes"}], heads)


def test_nc_cctv_recipe_keeps_its_dev_and_val_frames_out_of_training():
    """configs/train-nc-cctv.yaml: the CCTV frames it trains on (with and without a gun) are
    neither its cctv-dev frames (the choices) nor the split's cctv-val frames (the report)."""
    import csv

    from edge_agent.model.trainconfig import TrainConfig

    cfg = TrainConfig.load(REPO / "configs" / "train-nc-cctv.yaml")
    train = [s for s in cfg.train if s["name"] in ("cctv", "cctv-negatives")]
    assert [s["boxed"] for s in train] == [True, False]
    parts = {}
    for spec in train + [s for s in cfg.val if s["name"].startswith("cctv")]:
        f = REPO / spec["split"]["file"]
        with open(f, newline="", encoding="utf-8") as fh:
            rows = {r["image"] for r in csv.DictReader(fh)
                    if r["split"].strip() == spec["split"]["part"]}
        parts[spec["name"]] = rows
    trained = parts["cctv"] | parts["cctv-negatives"]
    assert trained and parts["cctv-dev"] and parts["cctv-val"]
    assert not trained & (parts["cctv-dev"] | parts["cctv-val"])
    assert parts["cctv-dev"] == parts["cctv-dev-tiles"]
    assert parts["cctv-val"] == parts["cctv-val-tiles"]


def test_validation_on_tiles_maps_boxes_back_like_the_daemon(yolox_nano):
    """predict_tiled (validation with ``tiles: 2``) on a sample frame in the bottom-right quarter
    of a grey frame twice its size: the tile head's boxes, in the big frame's letterboxed input
    pixels, are where the people of the frame alone are; the other heads keep the whole frame's."""
    from edge_agent.inference.postprocess import iou_matrix
    from edge_agent.model import train as T
    from edge_agent.model.data import letterbox_matrix
    from edge_agent.model.trainconfig import TrainConfig

    cfg = TrainConfig.load(REPO / "configs" / "train-full.yaml")
    net = N.MultiHeadNet(HEADS)
    W.load_coco(net, yolox_nano, {"crowd": [0]})
    net.eval()
    cap = cv2.VideoCapture(str(REPO / "samples" / "retail02_12s.mp4"))
    ok, img = cap.read()
    cap.release()
    assert ok
    h, w = img.shape[:2]
    big = np.full((2 * h, 2 * w, 3), 114, np.uint8)
    big[h:, w:] = img

    def letterboxed(frame):
        m = letterbox_matrix((frame.shape[1], frame.shape[0]), cfg.hw)
        out = cv2.warpAffine(frame, m, cfg.hw[::-1], borderValue=(114,) * 3)
        return out.transpose(2, 0, 1)[None].astype(np.float32), m[0, 0]

    x, r_alone = letterboxed(img)
    alone = T.predict(net, x, 0.3, 0.6)[0]["crowd"][:, :4] / r_alone + [w, h, w, h]
    xb, r_big = letterboxed(big)
    whole = T.predict(net, xb, 0.3, 0.6)[0]
    cfg.eval.score_threshold = 0.3
    tiled = T.predict_tiled(net, big, 2, cfg, whole, tile_heads=("crowd",))
    assert len(alone) >= 3 and len(tiled["crowd"]) > len(whole["crowd"])
    got = tiled["crowd"][:, :4] / r_big
    both = iou_matrix(np.concatenate([alone, got]).astype(np.float64))
    assert (both[:len(alone), len(alone):].max(1) > 0.7).mean() >= 0.8
    np.testing.assert_array_equal(tiled["plate"], whole["plate"])
