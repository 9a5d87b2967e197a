#!/usr/bin/env bash
# Install edge-agent as a systemd service from this checkout:
#   sudo systemd/install.sh [--prefix /opt/edge-agent]
# Creates the edge-agent user (groups video, render), a venv under the prefix (with
# --system-site-packages on Jetson so JetPack's TensorRT, pycuda and GStreamer OpenCV are used),
# /etc/edge-agent/edge-agent.yaml from the documented defaults, and enables the unit.
set -euo pipefail
prefix=/opt/edge-agent
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix="$2"; shift 2 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "run as root (sudo)" >&2; exit 1; }
src="$(cd "$(dirname "$0")/.." && pwd)"

for g in video render; do getent group "$g" >/dev/null || groupadd --system "$g"; done
id edge-agent >/dev/null 2>&1 || useradd --system --home-dir /var/lib/edge-agent \
  --shell /usr/sbin/nologin --groups video,render edge-agent

mkdir -p "$prefix"
venv_flags=""
extras="[cpu]"
if [ -f /etc/nv_tegra_release ]; then
  venv_flags="--system-site-packages"  # JetPack's tensorrt, pycuda, cv2
  extras=""                            # keep JetPack's OpenCV; no PyPI GPU wheels for aarch64
fi
python3 -m venv $venv_flags "$prefix/.venv"
"$prefix/.venv/bin/pip" install -q --upgrade pip
"$prefix/.venv/bin/pip" install -q "$src$extras"

install -d -m 0755 /etc/edge-agent
[ -f /etc/edge-agent/edge-agent.yaml ] || install -m 0644 "$src/configs/edge-agent.yaml" /etc/edge-agent/
[ -f /etc/edge-agent/env ] || install -m 0600 /dev/null /etc/edge-agent/env
# The engine store (model.engine_dir: engines) lives in the state dir; the shipped manifests go with it
# so a model without a manifest beside it is still recognised by its sha256.
install -d -o edge-agent -g edge-agent -m 0750 /var/lib/edge-agent /var/lib/edge-agent/engines \
  /var/lib/edge-agent/engines/manifests
install -m 0644 -o edge-agent "$src"/engines/manifests/*.json /var/lib/edge-agent/engines/manifests/
sed "s|/opt/edge-agent|$prefix|g" "$src/systemd/edge-agent.service" > /etc/systemd/system/edge-agent.service
"$prefix/.venv/bin/edge-agent" config validate /etc/edge-agent/edge-agent.yaml
systemctl daemon-reload
systemctl enable edge-agent.service
echo "installed; edit /etc/edge-agent/edge-agent.yaml, then: systemctl start edge-agent"
