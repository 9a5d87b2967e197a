"""Configuration: YAML file -> validated pydantic models.

Every error names the file, the line, the key path and what is wrong, e.g.::

    configs/site.yaml:14: cameras[1].fps_limit: Input should be greater than or equal to 0

Secrets (the MQTT password) are ``SecretStr`` so they print as ``**********``; they can come from
the environment instead of the file (see ``ENV_OVERRIDES``).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    StrictBool,
    StrictInt,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from edge_agent.config import shipped, yamlsafe
from edge_agent.config.secrets import PASSWORD_ENV, resolve_refs
from edge_agent.mqtt.topics import topic_problem
from edge_agent.tracking import CAMERA_PARAMS as TRACKER_CAMERA_PARAMS
from edge_agent.tracking import PARAMS as TRACKER_PARAMS
from edge_agent.tracking import REMOVED_PARAMS as TRACKER_REMOVED
from edge_agent.tracking import check_params as check_tracker_params

# Environment variables that override config values, so secrets need not sit in the file.
ENV_OVERRIDES: Dict[str, Tuple[str, ...]] = {
    "EDGE_AGENT_MQTT_USERNAME": ("mqtt", "username"),
    PASSWORD_ENV: ("mqtt", "password"),
    "EDGE_AGENT_MQTT_HOST": ("mqtt", "host"),
    "EDGE_AGENT_DEVICE_ID": ("device_id",),
}

_NAME_RE = r"^[A-Za-z0-9_-]{1,64}$"  # names end up in MQTT topics and file names
_HEX64_RE = re.compile(r"^[0-9a-fA-F]{64}$")  # an ed25519 public key written inline
_RTSP_RE = re.compile(r"^rtsps?://", re.IGNORECASE)
_USB_RE = re.compile(r"^(/dev/video\d+|\d+)$")


class ConfigError(Exception):
    """A config file could not be loaded; ``str()`` is the user-facing message (one per line)."""

    def __init__(self, problems: List[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


# Upper bounds of durations and sizes: what the consumers accept (OpenCV timeouts are int32 ms,
# threading waits overflow past ~2^63 ns, MQTT keepalive is 16 bits), well past any sane value.
DAY_S = 86400.0
MAX_MB = 1_000_000.0  # 1 TB
MAX_COUNT = 1_000_000


class _Model(BaseModel):
    # Unknown keys are errors: a typo must not silently fall back to a default. inf and NaN are
    # errors too: no consumer takes them (int(inf) raises, a wait of inf overflows).
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


class LogConfig(_Model):
    format: Literal["auto", "human", "json"] = Field(
        "auto", description="auto: JSON lines under systemd (JOURNAL_STREAM set), human otherwise"
    )
    level: Literal["debug", "info", "warning", "error"] = "info"


class ReconnectConfig(_Model):
    min_s: float = Field(0.5, gt=0, le=DAY_S, description="first delay before reopening a source")
    max_s: float = Field(30.0, gt=0, le=DAY_S, description="backoff doubles up to this delay")

    @model_validator(mode="after")
    def _ordered(self) -> ReconnectConfig:
        if self.max_s < self.min_s:
            raise ValueError(f"max_s ({self.max_s}) must be >= min_s ({self.min_s})")
        return self


class ZoneConfig(_Model):
    name: str = Field(..., pattern=_NAME_RE)
    polygon: Optional[List[Tuple[float, float]]] = Field(
        None, max_length=1000,
        description="[[x, y], ...] in normalised 0..1 frame coordinates; null = whole frame",
    )
    min_count: int = Field(5, ge=1, le=10000, description="crowd starts at this many persons")
    hold_s: float = Field(2.0, ge=0, le=DAY_S, description="... for at least this long")
    hysteresis: int = Field(1, ge=0, le=10000, description="crowd ends below min_count - this")
    update_interval_s: float = Field(5.0, gt=0, le=DAY_S, description="crowd update throttle")

    @field_validator("polygon")
    @classmethod
    def _check_polygon(cls, poly):
        if poly is None:
            return poly
        if len(poly) < 3:
            raise ValueError(f"a polygon needs at least 3 points, got {len(poly)}")
        for i, (x, y) in enumerate(poly):
            if not (math.isfinite(x) and math.isfinite(y)) or not (0 <= x <= 1 and 0 <= y <= 1):
                raise ValueError(f"point {i} ({x}, {y}) is outside the normalised range 0..1")
        area = 0.0
        for (x1, y1), (x2, y2) in zip(poly, poly[1:] + poly[:1]):
            area += x1 * y2 - x2 * y1
        if abs(area) < 1e-9:
            raise ValueError("the polygon has zero area (points are collinear or repeated)")
        return poly


class CameraConfig(_Model):
    name: str = Field(..., pattern=_NAME_RE, description="unique; used in topics and events")
    source: str = Field(..., min_length=1, description="file path, rtsp:// URL, /dev/videoN or N")
    record: Optional[str] = Field(
        None, min_length=1, description="stream recorded for clips without decoding (e.g. the "
        "camera's main stream while `source` is its substream); default: `source` when it is "
        "RTSP, else clips are made of the decoded frames")
    type: Literal["auto", "file", "rtsp", "usb", "gstreamer"] = Field(
        "auto", description="auto: guessed from source (rtsp:// -> rtsp, /dev/video* -> usb, ...)"
    )
    loop: bool = Field(False, description="file sources: start again at the end")
    realtime: bool = Field(False, description="file sources: pace reading at the file's own fps")
    fps_limit: float = Field(0, ge=0, le=1000, description="max frames/s processed; 0 = no limit")
    detect_every: int = Field(1, ge=1, le=10000, description="run the detector on every Nth frame")
    frame_queue: int = Field(
        4, ge=1, le=60, description="live sources: decoded frames kept for the inference loop "
        "(each W x H x 3 bytes: 690 kB at 640x360, 6.2 MB at 1080p); when full the oldest is "
        "dropped; 1 = newest frame only")
    tiles: int = Field(
        1, ge=1, le=4, description="detect also on tiles x tiles overlapping tiles of the frame "
        "(a camera that looks from far: each tile shows objects tiles times larger); costs "
        "1 + tiles^2 detector runs per detected frame; 1 = off")
    tile_heads: List[Literal["weapon", "crowd", "plate"]] = Field(
        default_factory=lambda: ["weapon"], description="heads that take the tiles' boxes "
        "(merged with the whole frame's by NMS); the others keep the whole frame's only")
    # Bounded: OpenCV rejects open/read timeouts of 2^31 ms and more; below 1 ms they read as 0.
    stall_timeout_s: float = Field(
        5.0, ge=0.01, le=DAY_S, description="reopen when no frame for this long"
    )
    reconnect: ReconnectConfig = ReconnectConfig()
    zones: List[ZoneConfig] = Field(default_factory=list)

    @field_validator("zones")
    @classmethod
    def _unique_zones(cls, zones):
        _reject_duplicates([z.name for z in zones], "zone")
        return zones

    def source_kind(self) -> str:
        """``type`` unless ``auto``, else guessed from ``source`` (file, rtsp, usb, gstreamer)."""
        if self.type != "auto":
            return self.type
        src = self.source.strip()
        if _RTSP_RE.match(src):
            return "rtsp"
        if _USB_RE.match(src):
            return "usb"
        if "!" in src:  # a gst-launch style pipeline: elements separated by '!'
            return "gstreamer"
        return "file"

    def record_stream(self) -> Optional[str]:
        """The URL whose packets clips are made of, or None (clips from decoded frames)."""
        if self.record is not None:
            return self.record
        return self.source if self.source_kind() == "rtsp" else None


class ModelConfig(_Model):
    path: str = Field(
        shipped.DEFAULT_MODEL,
        description="ONNX model (manifest beside it); the default names the shipped multi-head "
                    "model, found in the installed package (or the checkout) from any folder",
    )
    manifest: Optional[str] = Field(None, description="manifest JSON; default: beside the model")
    backend: Literal["auto", "onnxruntime", "tensorrt"] = Field(
        "auto", description="auto: TensorRT when importable and a GPU is present, else ONNX Runtime"
    )
    providers: List[Literal["tensorrt", "cuda", "cpu"]] = Field(
        default_factory=lambda: ["tensorrt", "cuda", "cpu"],
        description="ONNX Runtime execution providers, tried in this order",
    )
    precision: Literal["fp16", "fp32"] = "fp16"
    max_batch: int = Field(4, ge=1, le=64, description="cameras batched per inference")
    intra_op_threads: int = Field(0, ge=0, le=1024, description="ONNX Runtime threads; 0 = default")
    parallel_batches: int = Field(
        1, ge=1, le=16, description="batches the detector runs at once, each on "
        "intra_op_threads threads (ONNX Runtime only; TensorRT runs one). On a CPU box with many "
        "cameras, one thread each on as many batches as cores keeps every core busy: ONNX "
        "Runtime's own threads wait for each other on every layer of a small model")
    input_size: Optional[Tuple[int, int]] = Field(
        None, description="[width, height] the detector runs at, each a multiple of 32 "
        "(ONNX Runtime only; the graph is rewritten in memory at load, which needs the `onnx` "
        "package); null = the model's own (416 x 416 for the shipped model). [416, 256] fits a "
        "16:9 stream at the same scale as 416 x 416 with 38 % fewer pixels (docs/inference.md)")
    score_threshold: float = Field(0.3, ge=0, le=1)
    nms_iou: float = Field(0.45, gt=0, le=1)
    engine_dir: str = Field("engines", description="engine store: built plans and timing cache")

    @field_validator("input_size")
    @classmethod
    def _whole_cells(cls, v):
        # 32: the largest YOLOX stride; every level of the grid needs whole cells
        for side, n in zip(("width", "height"), v or ()):
            if not 32 <= n <= 4096 or n % 32:
                raise ValueError(f"{side} {n} must be a multiple of 32 in 32..4096")
        return v

    @field_validator("path")
    @classmethod
    def _shipped_default(cls, v: str) -> str:
        # The default value is a name for the shipped model, not a path relative to anything.
        return str(shipped.path(v)) if v == shipped.DEFAULT_MODEL else v


# Tracker parameters the config may set, derived from the tracker's own PARAMS table (one source
# of truth: tests/test_config_tracker.py and the stub check in tests/test_tracker_adaptive.py).
# The camera's own (CAMERA_PARAMS: frame rate and size) are not among them: the daemon takes
# them from each source.
_TRACKER_TYPES = {bool: StrictBool, int: StrictInt, float: float}
TRACKER_CONFIG_PARAMS = tuple(n for n in TRACKER_PARAMS if n not in TRACKER_CAMERA_PARAMS)

def _refuse_removed(cls, data: Any) -> Any:
    """A tracker option that was removed is named as such, not as an unknown key."""
    for name in sorted(set(data) & set(TRACKER_REMOVED)) if isinstance(data, dict) else ():
        raise ValueError(f"{name} was removed ({TRACKER_REMOVED[name]}: off by default, it did "
                         "not pay; docs/tracker.md): delete the key")
    return data


TrackerParams = create_model(
    "TrackerParams",
    __base__=_Model,
    __validators__={"refuse_removed": model_validator(mode="before")(_refuse_removed)},
    __doc__="One head's tracker parameters; unset ones come from `default`, then the head's "
            "built-in defaults (HEAD_TRACKER_DEFAULTS), then the tracker's PARAMS.",
    **{n: (Optional[_TRACKER_TYPES[TRACKER_PARAMS[n].kind]],
           Field(None, description=TRACKER_PARAMS[n].doc,
                 **({} if TRACKER_PARAMS[n].kind is bool
                    else {"ge": TRACKER_PARAMS[n].lo, "le": TRACKER_PARAMS[n].hi})))
       for n in TRACKER_CONFIG_PARAMS},
)

# Per-head defaults for the shipped model, on top of the tracker's PARAMS: weapons and plates
# are few and seen in short glimpses, so they are confirmed after two hits; a weapon track is
# kept longer through occlusion (a hand, a bag) so that one weapon stays one event.
HEAD_TRACKER_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "weapon": {"probation_age": 2, "max_shadow_s": 2.0},
    # plates: small, fast and not measured with visual tracking (docs/tracker.md)
    "plate": {"probation_age": 2, "visual": False},
}


class TrackerConfig(_Model):
    """``tracker: {default: {...}, crowd: {...}, weapon: {...}, plate: {...}}``."""

    default: TrackerParams = Field(default_factory=TrackerParams,
                                   description="every head, unless its own section says otherwise")
    crowd: TrackerParams = Field(default_factory=TrackerParams)
    weapon: TrackerParams = Field(default_factory=TrackerParams)
    plate: TrackerParams = Field(default_factory=TrackerParams)

    def params_for(self, head: str) -> Dict[str, Any]:
        """The parameters set for ``head`` (a head of another name gets ``default``'s)."""
        out = dict(HEAD_TRACKER_DEFAULTS.get(head, {}))
        out.update(self.default.model_dump(exclude_none=True))
        section = getattr(self, head, None) if head in type(self).model_fields else None
        if section is not None and head != "default":
            out.update(section.model_dump(exclude_none=True))
        return out

    @model_validator(mode="after")
    def _each_head_valid(self) -> TrackerConfig:
        # Rules across parameters (low_thresh <= high_thresh, ...) on each head's merged set.
        for head in type(self).model_fields:
            try:
                check_tracker_params(self.params_for(head))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{head}: {exc}") from None
        return self


class WeaponRuleConfig(_Model):
    enabled: bool = True
    threshold: float = Field(0.5, ge=0, le=1, description="median score over `window` frames")
    window: int = Field(5, ge=1, le=1000, description="frames in the median")
    update_interval_s: float = Field(2.0, gt=0, le=DAY_S)
    require_carrier: bool = Field(True, description="start only on or next to a person track")
    carrier_margin: float = Field(0.5, ge=0, le=10, description="person box grown by this x "
                                  "its width on each side")
    carrier_max_size: float = Field(1.0, gt=0, le=100, description="gun box's longer side <= "
                                    "this x the person box's longer side")


class PlateRuleConfig(_Model):
    enabled: bool = True
    ocr: bool = Field(True, description="read plate text when the [ocr] extra is installed")


class SnapshotConfig(_Model):
    enabled: bool = True
    dir: str = Field("snapshots", description="on-disk ring of JPEGs (relative to state_dir)")
    max_total_mb: float = Field(200, gt=0, le=MAX_MB, description="ring cap; oldest go first")
    max_dim: int = Field(1280, ge=64, le=16384, description="longest side of a snapshot (px)")
    jpeg_quality: int = Field(85, ge=10, le=100)


class ClipsConfig(_Model):
    enabled: bool = Field(True, description="record an MP4 around each alert of the `on` types")
    on: List[Literal["weapon", "crowd", "plate"]] = Field(
        default_factory=lambda: ["weapon"], description="event types that get a clip")
    dir: str = Field("clips", description="where clips are kept (relative to state_dir)")
    pre_s: float = Field(5.0, ge=0, le=60, description="seconds of video kept before the start")
    post_s: float = Field(10.0, ge=0, le=600, description="seconds recorded after the end")
    max_s: float = Field(120.0, gt=0, le=3600, description="longest clip; it ends there")
    overlay: bool = Field(True, description="draw the tracked boxes into the clip")
    max_dim: int = Field(960, ge=64, le=4096, description="longest side of clip frames (px)")
    max_total_mb: float = Field(1000, gt=0, le=MAX_MB, description="store cap; oldest go first")
    ring_max_mb: float = Field(32, gt=0, le=4096,
                               description="pre-roll memory cap per camera (MB)")

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data: Any) -> Any:
        """YAML 1.1 reads an unquoted ``on:`` key as the boolean true: take it as ``on``."""
        if isinstance(data, dict) and True in data and "on" not in data:
            data = {("on" if k is True else k): v for k, v in data.items()}
        return data


class SinksConfig(_Model):
    console: bool = Field(False, description="print events to stdout")
    jsonl: Optional[str] = Field(None, description="append events to this JSON-lines file "
                                 "(relative to state_dir)")


class EventsConfig(_Model):
    weapon: WeaponRuleConfig = WeaponRuleConfig()
    crowd_default_zone: bool = Field(True, description="whole-frame zone when a camera has none")
    plate: PlateRuleConfig = PlateRuleConfig()
    snapshots: SnapshotConfig = SnapshotConfig()
    clips: ClipsConfig = ClipsConfig()
    sinks: SinksConfig = SinksConfig()


class TlsConfig(_Model):
    ca_file: Optional[str] = None
    cert_file: Optional[str] = None
    key_file: Optional[str] = None
    insecure: bool = Field(False, description="skip hostname check; only if you really mean it")


class OutboxConfig(_Model):
    path: str = Field("outbox.sqlite", description="SQLite file (relative to state_dir)")
    max_rows: int = Field(100_000, ge=1, le=100_000_000)
    max_mb: float = Field(256, gt=0, le=MAX_MB)
    commit_interval_ms: int = Field(
        50, ge=0, le=60_000, description="batch fsyncs (events publish once synced); 0 = each"
    )


def parse_host_port(text: str, what: str = "host") -> Tuple[str, int]:
    """``host:port`` or ``[v6 address]:port`` -> (host, port); ValueError naming ``what``."""
    if not isinstance(text, str):
        raise ValueError(f"{what}: expected 'host:port', got {type(text).__name__}")
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or any(c.isspace() or c in "/[]" for c in host):
        raise ValueError(f"{what}: {text!r} is not 'host:port'")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{what}: {text!r} has no port in 1..65535")
    return host, int(port)


class MqttConfig(_Model):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    hosts: List[str] = Field(
        default_factory=list, max_length=64,
        description="brokers of a cluster as host:port ([v6]:port), tried in turn on connection "
                    "loss; when set, host/port are not used")
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive_s: int = Field(30, ge=5, le=65535, description="MQTT keepalive is 16 bits")
    topic_prefix: str = Field("edge-agent", min_length=1, max_length=256)
    username: Optional[str] = None
    password: Optional[SecretStr] = Field(None, description="or env EDGE_AGENT_MQTT_PASSWORD")
    tls: Optional[TlsConfig] = None
    event_qos: Literal[0, 1, 2] = 1
    max_inflight: int = Field(20, ge=1, le=65535, description="unacknowledged messages at once")
    reconnect_min_s: float = Field(1.0, gt=0, le=DAY_S)
    reconnect_max_s: float = Field(60.0, gt=0, le=DAY_S)
    stats_interval_s: float = Field(30.0, gt=0, le=DAY_S)
    # MQTT's largest packet is 256 MB; a command is a small JSON object.
    max_command_bytes: int = Field(65536, ge=256, le=16 << 20)
    ha_discovery: bool = Field(False, description="publish Home Assistant discovery configs")
    ha_prefix: str = Field("homeassistant", min_length=1, max_length=256)
    outbox: OutboxConfig = OutboxConfig()
    delivery: Literal["puback", "end_to_end"] = Field(
        "puback", description="when an outbox row is deleted: on the broker's PUBACK, or when "
                              "the consumer acknowledged its seq on <prefix>/<device>/ack")
    ack_timeout_s: float = Field(
        30.0, gt=0, le=DAY_S, description="end_to_end: no acknowledgement progress for this "
                                          "long -> publish the unacknowledged events again")

    @field_validator("hosts")
    @classmethod
    def _host_ports(cls, v):
        for i, item in enumerate(v):
            parse_host_port(item, f"hosts[{i}]")
        return v

    def endpoints(self) -> List[Tuple[str, int]]:
        """The brokers to connect to, in order: ``hosts``, or ``host``/``port``."""
        if self.hosts:
            return [parse_host_port(h, "hosts") for h in self.hosts]
        return [(self.host, self.port)]

    @field_validator("topic_prefix", "ha_prefix")
    @classmethod
    def _usable_in_topics(cls, v):
        if any(c in v for c in "#+") or v.startswith("/") or v.endswith("/"):
            raise ValueError("must not contain '#' or '+' nor start or end with '/'")
        why = topic_problem(v)
        if why:
            raise ValueError(f"not usable in a topic: it {why}")
        return v

    @model_validator(mode="after")
    def _password_needs_user(self) -> MqttConfig:
        if self.password is not None and not self.username:
            raise ValueError("password is set but username is not")
        return self


class UpdateConfig(_Model):
    """Remote engine updates (docs/update.md)."""

    enabled: bool = Field(True, description="model store under state_dir/models and "
                          "cmd/engine.*; off: the agent runs model.path as is")
    trusted_keys: List[str] = Field(
        default_factory=list, description="ed25519 public keys (64 hex digits, or a file with "
        "them or a PEM key); several at once so keys can rotate")
    allow_unsigned: bool = Field(False, description="DEVELOPMENT ONLY: accept unsigned models "
                                 "(announced at every start in the log and in state)")
    allow_downgrade: bool = False
    keep_versions: int = Field(3, ge=2, le=100, description="versions kept in the store")
    max_download_mb: float = Field(500, gt=0, le=MAX_MB)
    download_timeout_s: float = Field(30, gt=0, le=3600,
                                      description="connect/read timeout: a stalled server fails")
    download_retries: int = Field(2, ge=0, le=20, description="resumed (Range) retries")
    download_deadline_s: float = Field(1800, gt=0, le=86400, description="a whole download, "
                                       "retries included; past it the update fails (timeout)")
    download_min_rate_kb_s: float = Field(
        1.0, ge=0, le=1e6, description="KiB/s a download must keep over every "
        "download_timeout_s; slower fails (timeout); 0 = no floor")
    download_max_resumes: int = Field(3, ge=0, le=100, description="resumes of a journaled "
                                      "update after restarts before it is abandoned")
    ca_file: Optional[str] = Field(None, description="CA bundle for https:// model URLs")
    min_input: int = Field(32, ge=16, le=8192, description="smallest model input side accepted")
    max_input: int = Field(2048, ge=16, le=8192, description="largest model input side accepted")
    health_check_batches: int = Field(20, ge=1, le=MAX_COUNT,
                                      description="batches the new engine must pass")
    health_latency_factor: float = Field(
        3.0, gt=1, le=1000, description="new engine's median latency <= factor x the old one's")
    health_timeout_s: float = Field(120, gt=0, le=86400,
                                    description="no N batches in this time: roll back")
    health_require_detections: bool = Field(
        True, description="roll back when the new engine finds nothing on frames where the old "
        "one found objects")

    @model_validator(mode="after")
    def _input_bounds_ordered(self) -> UpdateConfig:
        if self.max_input < self.min_input:
            raise ValueError(f"max_input ({self.max_input}) must be >= min_input "
                             f"({self.min_input})")
        return self


class MetricsConfig(_Model):
    enabled: bool = Field(True, description="serve /metrics (Prometheus) and /healthz over HTTP")
    host: str = Field("127.0.0.1", min_length=1,
                      description="listen address; loopback unless you set another (0.0.0.0: all)")
    port: int = Field(9108, ge=0, le=65535, description="TCP port; 0 = any free port")
    max_frame_age_s: float = Field(
        10.0, gt=0, le=86400, description="/healthz is 503 when a camera's last frame is older")
    # Each connection is a descriptor and a thread: the cap keeps them far below LimitNOFILE.
    max_connections: int = Field(16, ge=1, le=256, description="HTTP connections at once; an "
                                 "idle one is dropped for a newer one, the rest refused")
    request_timeout_s: float = Field(5.0, gt=0, le=300, description="each read/write of a "
                                     "connection; a silent client is dropped after it")
    token: Optional[SecretStr] = Field(
        None, description="bearer token for GET /clips/...; required off loopback "
        "(the environment variable EDGE_AGENT_HTTP_TOKEN wins)")


class Config(_Model):
    device_id: str = Field("edge-1", pattern=_NAME_RE, description="MQTT client id and topics")
    state_dir: str = Field("/var/lib/edge-agent", description="outbox, seq, snapshots, engines")
    log: LogConfig = LogConfig()
    model: ModelConfig = ModelConfig()
    cameras: List[CameraConfig] = Field(default_factory=list)
    tracker: TrackerConfig = TrackerConfig()
    events: EventsConfig = EventsConfig()
    mqtt: MqttConfig = MqttConfig()
    update: UpdateConfig = UpdateConfig()
    metrics: MetricsConfig = MetricsConfig()
    # (file name, line of every key path) when loaded from YAML, for edge_agent.daemon.preflight
    _origin: Optional[Tuple[str, Dict[Tuple[Any, ...], int]]] = PrivateAttr(None)
    # values that ${NAME} references stood for: secrets (edge_agent.config.secrets)
    _secrets: List[str] = PrivateAttr(default_factory=list)

    @field_validator("cameras")
    @classmethod
    def _unique_cameras(cls, cams):
        _reject_duplicates([c.name for c in cams], "camera")
        return cams


def _reject_duplicates(names: List[str], what: str) -> None:
    seen: Dict[str, int] = {}
    for i, n in enumerate(names):
        if n in seen:
            raise ValueError(f"duplicate {what} name {n!r} (entries {seen[n]} and {i})")
        seen[n] = i


# --- loading ---------------------------------------------------------------------------------


def _format_loc(loc: Tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text or "(top level)"


def _line_for(loc: Tuple[Any, ...], lines: Dict[Tuple[Any, ...], int]) -> int:
    # Missing keys have no line of their own: report the nearest parent that exists.
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return 1


def _apply_env(data: Dict[str, Any], environ) -> None:
    for var, path in ENV_OVERRIDES.items():
        if var in environ:
            node = data
            for key in path[:-1]:
                node = node.setdefault(key, {})
                if not isinstance(node, dict):
                    return  # the file's own error will be reported by validation
            node[path[-1]] = environ[var]


def load_text(text: str, filename: str = "<config>", environ=None) -> Config:
    """Parse and validate YAML text; raise ``ConfigError`` naming file:line and key path."""
    environ = os.environ if environ is None else environ
    try:
        data, lines = yamlsafe.parse(text)
    except yamlsafe.YamlProblem as exc:
        raise ConfigError([f"{filename}:{exc.line}: {exc.message}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{filename}:1: the top level must be a mapping of keys"])
    _apply_env(data, environ)
    data, secret_values, unresolved = resolve_refs(data, environ)
    if unresolved:
        raise ConfigError([f"{filename}:{_line_for(loc, lines)}: {_format_loc(loc)}: {why}"
                           for loc, why in unresolved])
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
            msg = err["msg"]
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, "):]
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            problems.append(f"{filename}:{_line_for(loc, lines)}: {_format_loc(loc)}: {msg}")
        raise ConfigError(problems) from None
    cfg._origin = (filename, lines)
    cfg._secrets = secret_values
    return cfg


def load(path: Union[str, Path], environ=None) -> Config:
    """Load and validate a config file (at most ``yamlsafe.MAX_BYTES``)."""
    path = Path(path)
    try:
        raw = yamlsafe.read_bounded(str(path))
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such config file"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config file: {exc}"]) from None
    if raw is None:
        raise ConfigError([f"{path}:1: larger than {yamlsafe.MAX_BYTES // 1024} KiB "
                           "(a config is a few kilobytes)"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError([f"{path}:{line}: not UTF-8 text ({exc.reason})"]) from None
    cfg = load_text(text, str(path), environ)
    resolve_paths(cfg, Path(os.path.abspath(path)).parent)
    return cfg


def _under(base: Path, value: Optional[str]) -> Optional[str]:
    if not value or os.path.isabs(value):
        return value
    return str(base / value)


def resolve_paths(cfg: Config, base: Path) -> None:
    """Make the relative file paths of ``cfg`` absolute under ``base`` (the config's folder).

    So a config means the same files from any working directory (the service runs in its state
    dir). Paths documented as relative to ``state_dir`` stay relative to it; key strings of 64 hex
    digits, URLs, devices and pipelines are not paths.
    """
    cfg.state_dir = _under(base, cfg.state_dir) or cfg.state_dir
    m = cfg.model
    m.path = _under(base, m.path) or m.path
    m.manifest = _under(base, m.manifest)
    m.engine_dir = _under(base, m.engine_dir) or m.engine_dir
    for cam in cfg.cameras:
        if cam.source_kind() == "file":
            cam.source = _under(base, cam.source.strip()) or cam.source
    tls = cfg.mqtt.tls
    if tls is not None:
        tls.ca_file = _under(base, tls.ca_file)
        tls.cert_file = _under(base, tls.cert_file)
        tls.key_file = _under(base, tls.key_file)
    cfg.update.ca_file = _under(base, cfg.update.ca_file)
    cfg.update.trusted_keys = [k if _HEX64_RE.match(k.strip()) else (_under(base, k.strip()) or k)
                               for k in cfg.update.trusted_keys]


def problem(cfg: Config, loc: Tuple[Any, ...], reason: str) -> str:
    """``file:line: key: reason`` for a check made after loading (see
    ``edge_agent.daemon.preflight``)."""
    filename, lines = cfg._origin or ("<config>", {})
    return f"{filename}:{_line_for(loc, lines)}: {_format_loc(loc)}: {reason}"
