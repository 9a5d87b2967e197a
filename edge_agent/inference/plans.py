"""The engine store: built TensorRT plans, their cache keys, and the timing cache.

A plan runs only on the TensorRT version and GPU it was built for, so every plan is stored with a
sidecar JSON holding its :class:`PlanKey` (ONNX sha256, TensorRT version, GPU name, compute
capability, precision, max batch) and the plan's own sha256. Loading compares the sidecar's key
with the key of this device and this model in plain Python, before TensorRT ever sees the bytes,
and refuses a mismatch with a :class:`PlanMismatchError` naming every field that differs.

Layout under ``engine_dir`` (``model.engine_dir``, default ``engines/``)::

    manifests/<name>.json                      shipped manifests, matched by ONNX sha256
    cache/plans/<model>-<key digest>.plan      a serialized TensorRT engine
    cache/plans/<model>-<key digest>.json      its sidecar: key, plan sha256/size, build info
    cache/timing/<gpu>-sm<cc>-trt<version>.cache   TensorRT timing cache (speeds up rebuilds)
    cache/ort-trt/                              ONNX Runtime TensorRT EP engine cache
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Dict, List, Optional

from edge_agent.inference.errors import ModelError, PlanMismatchError

SIDECAR_FORMAT = 1


@dataclass(frozen=True)
class PlanKey:
    """Everything a plan depends on; two plans with equal keys are interchangeable."""

    onnx_sha256: str
    trt_version: str
    gpu_name: str
    compute_capability: str  # e.g. "8.7"
    precision: str  # "fp16" | "fp32"
    max_batch: int

    def __post_init__(self):
        if self.precision not in ("fp16", "fp32"):
            raise ValueError(f"precision must be fp16 or fp32, got {self.precision!r}")
        if not isinstance(self.max_batch, int) or self.max_batch < 1:
            raise ValueError(f"max_batch must be an int >= 1, got {self.max_batch!r}")

    def digest(self) -> str:
        """Short stable hash of the key (part of the plan's file name)."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def differences(self, other: PlanKey) -> List[str]:
        """Human-readable fields where ``self`` (a plan) differs from ``other`` (this device)."""
        return [f"{f.name}: plan has {getattr(self, f.name)!r}, this device/model needs "
                f"{getattr(other, f.name)!r}"
                for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]

    @classmethod
    def from_dict(cls, data: Dict[str, Any], source: str) -> PlanKey:
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in data]
        if missing:
            raise ModelError(f"plan sidecar {source}: key lacks {missing}")
        try:
            return cls(**{n: data[n] for n in names})
        except (TypeError, ValueError) as exc:
            raise ModelError(f"plan sidecar {source}: bad key: {exc}") from exc


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class PlanStore:
    """Plans and timing caches under ``<engine_dir>/cache``."""

    def __init__(self, engine_dir: os.PathLike):
        self.root = Path(engine_dir)
        self.plans_dir = self.root / "cache" / "plans"
        self.timing_dir = self.root / "cache" / "timing"

    def plan_path(self, key: PlanKey, model_name: str) -> Path:
        return self.plans_dir / f"{_slug(model_name)}-{key.digest()}.plan"

    @staticmethod
    def sidecar_path(plan: Path) -> Path:
        return plan.with_suffix(".json")

    def timing_cache_path(self, key: PlanKey) -> Path:
        """One timing cache per GPU and TensorRT version (shared by all models)."""
        return self.timing_dir / (f"{_slug(key.gpu_name)}-sm{_slug(key.compute_capability)}"
                                  f"-trt{_slug(key.trt_version)}.cache")

    def save(self, key: PlanKey, model_name: str, plan: bytes,
             info: Optional[Dict[str, Any]] = None) -> Path:
        """Store a plan and its sidecar (plan first, so a sidecar never points at nothing)."""
        if not plan:
            raise ModelError("refusing to store an empty plan")
        self.plans_dir.mkdir(parents=True, exist_ok=True)
        path = self.plan_path(key, model_name)
        write_atomic(path, plan)
        sidecar = {
            "format": SIDECAR_FORMAT,
            "model": model_name,
            "key": asdict(key),
            "plan_sha256": hashlib.sha256(plan).hexdigest(),
            "plan_bytes": len(plan),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **(info or {}),
        }
        write_atomic(self.sidecar_path(path), (json.dumps(sidecar, indent=2) + "\n").encode())
        return path

    def read_key(self, plan: Path) -> PlanKey:
        """The key recorded beside a plan; :class:`ModelError` when there is none or it is bad."""
        side = self.sidecar_path(Path(plan))
        try:
            data = json.loads(side.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelError(f"plan {plan}: no sidecar {side.name}; cannot tell what it was "
                             "built for; rebuild it with `edge-agent engine build`") from None
        except (OSError, ValueError) as exc:
            raise ModelError(f"plan sidecar {side}: unreadable: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("key"), dict):
            raise ModelError(f"plan sidecar {side}: no key object")
        return PlanKey.from_dict(data["key"], str(side))

    def load(self, plan: os.PathLike, expected: PlanKey) -> bytes:
        """The plan's bytes, after checking its key against ``expected`` and its sha256.

        Raises :class:`PlanMismatchError` when the plan was built for something else, and
        :class:`ModelError` when the plan or sidecar is missing, truncated or altered.
        """
        plan = Path(plan)
        key = self.read_key(plan)
        diff = key.differences(expected)
        if diff:
            raise PlanMismatchError(f"plan {plan} does not fit: " + "; ".join(diff)
                                    + " (rebuild with `edge-agent engine build`)")
        side = json.loads(self.sidecar_path(plan).read_text(encoding="utf-8"))
        try:
            data = plan.read_bytes()
        except OSError as exc:
            raise ModelError(f"plan {plan}: cannot read: {exc.strerror or exc}") from exc
        if len(data) != side.get("plan_bytes") or \
                hashlib.sha256(data).hexdigest() != side.get("plan_sha256"):
            raise ModelError(f"plan {plan}: {len(data)} bytes whose sha256 is not the one its "
                             "sidecar recorded (truncated or altered); rebuild it")
        return data

    def find(self, key: PlanKey, model_name: str) -> Optional[Path]:
        """The stored plan for exactly this key, if any."""
        path = self.plan_path(key, model_name)
        return path if path.is_file() and self.sidecar_path(path).is_file() else None

    def plans_for(self, onnx_sha256: str) -> List[Dict[str, Any]]:
        """Sidecars of every stored plan of a model (any device), for `engine inspect`."""
        out = []
        if self.plans_dir.is_dir():
            for side in sorted(self.plans_dir.glob("*.json")):
                try:
                    data = json.loads(side.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    continue
                if isinstance(data, dict) and data.get("key", {}).get("onnx_sha256") == \
                        onnx_sha256:
                    out.append(dict(data, plan=str(side.with_suffix(".plan"))))
        return out
