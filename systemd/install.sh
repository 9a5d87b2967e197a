#!/usr/bin/env bash
# Install (or uninstall) edge-agent as a systemd service from this checkout.
#
#   sudo systemd/install.sh                 install: user, venv, config, unit; enable the unit
#   systemd/install.sh --dry-run            print every step, change nothing (root not needed)
#   systemd/install.sh --prefix DIR         everything under DIR (no user, no systemctl; no root)
#   sudo systemd/install.sh --uninstall     remove the venv and unit; keep config and data
#   sudo systemd/install.sh --uninstall --purge   ... and the config, the data and the user
#
# Also reachable as `edge-agent service install [options]`. Every step checks first and acts
# only when something differs, so a second run changes nothing and says so. A config the user
# has changed is never overwritten: the new default goes beside it as edge-agent.yaml.new.
# On a Jetson (/etc/nv_tegra_release) the venv is made with --system-site-packages so JetPack's
# TensorRT, pycuda and GStreamer-enabled OpenCV are used; elsewhere the [cpu] or [gpu] extra.
#
# Exit status: 0 done (or nothing to change), 1 refused or failed, 2 bad usage.
set -euo pipefail

usage() {
  sed -n '3,8p' "$0" | sed 's/^# \{0,1\}//'
  cat <<'EOF'
options:
  --prefix DIR     install under DIR: DIR/opt/edge-agent, DIR/etc/edge-agent,
                   DIR/var/lib/edge-agent, DIR/etc/systemd/system (for tests and packagers)
  --dry-run        print each step that would change something; change nothing
  --uninstall      remove what the install added; keep config and data
  --purge          with --uninstall: also remove config, data and the edge-agent user
  --extra NAME     auto (default), cpu, gpu or none: the pip extra to install
  --python PY      the interpreter for the venv (default python3)
EOF
}

prefix="" dry_run=0 uninstall=0 purge=0 extra=auto python=python3
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || { echo "error: --prefix needs a directory" >&2; exit 2; }
              prefix="$2"; shift 2 ;;
    --prefix=*) prefix="${1#--prefix=}"; shift ;;
    --dry-run) dry_run=1; shift ;;
    --uninstall) uninstall=1; shift ;;
    --purge) purge=1; shift ;;
    --extra) [ $# -ge 2 ] || { echo "error: --extra needs a name" >&2; exit 2; }
             extra="$2"; shift 2 ;;
    --python) [ $# -ge 2 ] || { echo "error: --python needs an interpreter" >&2; exit 2; }
              python="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$extra" in auto|cpu|gpu|none) ;; *)
  echo "error: --extra must be auto, cpu, gpu or none, not '$extra'" >&2; exit 2 ;;
esac
if [ "$purge" = 1 ] && [ "$uninstall" = 0 ]; then
  echo "error: --purge only goes with --uninstall" >&2; exit 2
fi
if [ -n "$prefix" ]; then
  [ "${prefix#/}" != "$prefix" ] || prefix="$(pwd)/$prefix"
  prefix="${prefix%/}"
fi

src="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
app="$prefix/opt/edge-agent"       # venv and the installer's records
etc="$prefix/etc/edge-agent"       # config and env file (kept on uninstall)
state="$prefix/var/lib/edge-agent" # outbox, snapshots, engines (kept on uninstall)
unitdir="$prefix/etc/systemd/system"
unit="$unitdir/edge-agent.service"
dropin="$unitdir/edge-agent.service.d/devices.conf"
records="$app/.install"
user=edge-agent
tegra="${EDGE_AGENT_TEGRA_RELEASE:-/etc/nv_tegra_release}"  # override only to test the Jetson path

if [ -z "$prefix" ] && [ "$dry_run" = 0 ] && [ "$(id -u)" != 0 ]; then
  echo "error: a real install changes /opt, /etc, /var/lib, users and systemd and needs root:" \
       "run it with sudo, or use --dry-run to see the steps, or --prefix DIR to install" \
       "into a directory" >&2
  exit 1
fi

changes=0
say() { printf '%s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
# change DESCRIPTION CMD...: count a change; print it; run it unless this is a dry run.
change() {
  local what="$1"; shift
  changes=$((changes + 1))
  if [ "$dry_run" = 1 ]; then say "would: $what"; return 0; fi
  say "do: $what"
  "$@"
}
same() { say "ok: $*"; }

# put_file SRC DEST MODE: copy when DEST is missing or differs.
put_file() {
  if [ -f "$2" ] && cmp -s "$1" "$2"; then same "$2"; return 0; fi
  change "$([ -e "$2" ] && echo update || echo create) $2" install -m "$3" "$1" "$2"
}
put_dir() {
  if [ -d "$1" ]; then same "$1/"; return 0; fi
  change "create $1/" install -d -m "$2" "$1"
}

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# --- what to install --------------------------------------------------------------------------

is_jetson() { [ -f "$tegra" ]; }

pip_extra() {
  if [ "$extra" != auto ]; then echo "$extra"
  elif is_jetson; then echo none  # JetPack's TensorRT/pycuda/OpenCV; PyPI has no aarch64 GPU ORT
  elif [ -e /dev/nvidiactl ] || command -v nvidia-smi >/dev/null 2>&1; then echo gpu
  else echo cpu
  fi
}

# The package's identity: its files and the extra; a reinstall happens only when it changes.
source_stamp() {
  (cd "$src" && find edge_agent setup.cfg setup.py pyproject.toml README.md -type f \
      ! -name '*.pyc' ! -name '*.so' ! -path '*__pycache__*' -print0 | sort -z \
    | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
}

# --- paths into YAML and into the unit, whatever characters they hold --------------------------
# (no sed: a '|' or '&' in a path must not become part of an expression)

# replace_all TEXT FROM TO: every FROM in TEXT replaced by TO, both taken literally.
replace_all() {
  local text="$1" from="$2" to="$3" out=""
  while [[ "$text" == *"$from"* ]]; do
    out+="${text%%"$from"*}$to"
    text="${text#*"$from"}"
  done
  printf '%s' "$out$text"
}

# The install paths as the shipped files spell them -> this install's.
map_paths() {
  local s
  s="$(replace_all "$1" /opt/edge-agent "$app")"
  s="$(replace_all "$s" /etc/edge-agent "$etc")"
  replace_all "$s" /var/lib/edge-agent "$state"
}

plain_path() { [[ "$1" =~ ^[A-Za-z0-9_./+:@-]+$ ]]; }

# yaml_str PATH: as a YAML scalar (single-quoted unless plain; the prefix has no quotes).
yaml_str() { if plain_path "$1"; then printf '%s' "$1"; else printf "'%s'" "$1"; fi; }

# systemd quoting (systemd.service(5), "Command lines"): % is a specifier everywhere (%%), $ a
# variable in arguments ($$); a word with a space is double-quoted. Quotes, backslashes and
# control characters are refused up front (check_prefix): systemd takes none in an executable.
unit_value() { replace_all "$1" % %%; }
exec_word() {  # WORD ARG?: one word of an Exec line; ARG=1 for an argument (not the program)
  local w
  w="$(unit_value "$1")"
  [ "${2:-0}" = 0 ] || w="$(replace_all "$w" '$' '$$')"
  if plain_path "$1"; then printf '%s' "$w"; else printf '"%s"' "$w"; fi
}

# The paths of an install end up in a unit, a YAML file and a venv; refuse what they cannot
# take: systemd no quotes or backslashes in an executable's path, no control characters, only
# UTF-8; pip's build (distutils) expands '$' in a venv's path.
check_prefix() {
  local LC_ALL=C
  if [[ "$1" =~ [[:cntrl:]] || "$1" == *[\"\'\\\$]* ]] \
     || ! printf '%s' "$1" | iconv -f UTF-8 -t UTF-8 >/dev/null 2>&1; then
    echo "error: --prefix $(printf '%q' "$1"): quotes, backslashes, '\$', control characters" \
         "and non-UTF-8 bytes cannot be in the paths of a systemd unit and a venv; choose" \
         "another directory" >&2
    exit 2
  fi
}

# The state dir and the engine store are absolute; model.path keeps its default, which names
# the model installed with the package.
render_config() {
  local line rest
  while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in
      "state_dir: /var/lib/edge-agent "*)
        rest="${line#"state_dir: /var/lib/edge-agent "}"
        line="state_dir: $(yaml_str "$state") $rest" ;;
      "  engine_dir: ../engines "*)
        rest="${line#"  engine_dir: ../engines "}"
        line="  engine_dir: $(yaml_str "$state/engines") $rest" ;;
    esac
    printf '%s\n' "$line"
  done <"$src/configs/edge-agent.yaml"
}

# The shipped unit with this install's paths: quoted words in ExecStart=, specifiers escaped in
# the other settings, comments as they read.
render_unit() {
  local line key words w i out
  while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in
      ExecStart=*)
        key="${line%%=*}"
        read -ra words <<<"${line#*=}"
        out=""
        for i in "${!words[@]}"; do
          w="${words[$i]}"
          case "$w" in
            /opt/edge-agent*|/etc/edge-agent*|/var/lib/edge-agent*)
              w="$(exec_word "$(map_paths "$w")" "$([ "$i" = 0 ] && echo 0 || echo 1)")" ;;
          esac
          out+="${out:+ }$w"
        done
        line="$key=$out" ;;
      "#"*) line="$(map_paths "$line")" ;;
      *=*/opt/edge-agent*|*=*/etc/edge-agent*|*=*/var/lib/edge-agent*)
        line="${line%%=*}=$(unit_value "$(map_paths "${line#*=}")")" ;;
    esac
    printf '%s\n' "$line"
  done <"$src/systemd/edge-agent.service"
}

# Jetson GPU nodes have SoC-specific device group names, so they are allowed by path: every
# character device the video/render groups may open (cameras and DRM are allowed by group).
render_dropin() {
  local nodes
  nodes="$(find /dev -xdev -type c \( -group video -o -group render \) 2>/dev/null \
           | grep -v -E '^/dev/(video[0-9]|dri/|v4l)' | sort || true)"
  echo "# Written by install.sh from the device nodes of this machine; run it again after"
  echo "# adding hardware. Groups video and render may open these."
  echo "[Service]"
  if [ -z "$nodes" ] && is_jetson; then
    echo "# No GPU nodes found: the device allow-list is lifted rather than hide the GPU."
    echo "DevicePolicy=auto"
    echo "DeviceAllow="
    return
  fi
  local n
  for n in $nodes; do echo "DeviceAllow=$n rw"; done
}

jetson_checks() {
  local py="$1"
  "$py" -c 'import tensorrt' 2>/dev/null \
    || warn "TensorRT is not importable by $py: install JetPack's python3-libnvinfer" \
            "(apt, part of nvidia-jetpack)"
  "$py" -c 'import pycuda.driver' 2>/dev/null \
    || warn "pycuda is not importable by $py: sudo pip3 install pycuda (it builds against" \
            "JetPack's CUDA; the TensorRT backend needs it)"
  "$py" -c 'import re, sys, cv2
sys.exit(0 if re.search(r"GStreamer:\s+YES", cv2.getBuildInformation()) else 1)' 2>/dev/null \
    || warn "OpenCV with GStreamer is not importable by $py: install JetPack's OpenCV" \
            "(nvidia-opencv, part of nvidia-jetpack); CSI cameras and hardware decoding need it"
}

# --- install ----------------------------------------------------------------------------------

install_system_user() {
  local g
  for g in video render; do
    getent group "$g" >/dev/null || change "create group $g" groupadd --system "$g"
  done
  if ! id "$user" >/dev/null 2>&1; then
    change "create user $user (groups video, render)" useradd --system --home-dir "$state" \
      --shell /usr/sbin/nologin --user-group --groups video,render "$user"
  else
    for g in video render; do
      id -nG "$user" | tr ' ' '\n' | grep -qx "$g" \
        || change "add $user to group $g" usermod -a -G "$g" "$user"
    done
    same "user $user"
  fi
}

install_venv() {
  local venv="$app/.venv" flags="" want_ssp=false
  if is_jetson; then flags="--system-site-packages"; want_ssp=true; fi
  if [ -x "$venv/bin/python" ] \
     && grep -qx "include-system-site-packages = $want_ssp" "$venv/pyvenv.cfg" 2>/dev/null; then
    same "$venv (venv${flags:+ $flags})"
  else
    [ ! -e "$venv" ] || change "remove $venv (other site-packages setting)" rm -rf "$venv"
    local why=""
    [ -z "$flags" ] || why=" ($flags: the TensorRT, pycuda and OpenCV of JetPack)"
    change "create venv $venv$why" "$python" -m venv $flags "$venv"
  fi
  if is_jetson; then
    if [ -x "$venv/bin/python" ]; then jetson_checks "$venv/bin/python"; else jetson_checks "$python"; fi
  fi
  local x spec stamp
  x="$(pip_extra)"
  spec="$src"; [ "$x" = none ] || spec="$src[$x]"
  stamp="extra=$x source=$(source_stamp)"
  if [ "$(cat "$records/package" 2>/dev/null)" = "$stamp" ]; then
    same "edge-agent package in $venv (extra $x)"
  else
    change "pip install $spec into $venv" "$venv/bin/python" -m pip install -q --disable-pip-version-check "$spec"
    if [ "$dry_run" = 0 ]; then mkdir -p "$records" && printf '%s\n' "$stamp" >"$records/package"; fi
  fi
}

# A config the user edited is kept; the new default goes beside it as .new. An untouched one
# (it equals the default this installer wrote last time) follows the new default.
install_config() {
  local conf="$etc/edge-agent.yaml" new="$tmp/edge-agent.yaml" last="$records/edge-agent.yaml.default"
  render_config >"$new"
  if [ ! -e "$conf" ]; then
    change "create $conf (documented defaults)" install -m 0644 "$new" "$conf"
  elif cmp -s "$new" "$conf"; then
    same "$conf"
  elif [ -f "$last" ] && cmp -s "$last" "$conf"; then
    change "update $conf (untouched default -> new default)" install -m 0644 "$new" "$conf"
  elif [ -f "$last" ] && cmp -s "$new" "$last"; then
    same "$conf (changed by you; the default did not change)"
  elif [ -f "$conf.new" ] && cmp -s "$new" "$conf.new"; then
    same "$conf (changed by you; the new default is in $conf.new)"
  else
    change "write $conf.new (your $conf is changed: kept as it is)" \
      install -m 0644 "$new" "$conf.new"
    warn "$conf was changed by you and is kept; compare it with $conf.new"
  fi
  if [ ! -f "$last" ] || ! cmp -s "$new" "$last"; then
    if [ "$dry_run" = 0 ]; then mkdir -p "$records" && cp "$new" "$last"; fi
  fi
  if [ -e "$etc/env" ]; then same "$etc/env"; else
    change "create $etc/env (mode 0600, for secrets)" install -m 0600 /dev/null "$etc/env"
  fi
}

install_state() {
  put_dir "$state" 0750
  put_dir "$state/engines" 0750
  put_dir "$state/engines/manifests" 0750
  local m
  for m in "$src"/engines/manifests/*.json; do
    [ -e "$m" ] && put_file "$m" "$state/engines/manifests/$(basename "$m")" 0644
  done
  if [ -z "$prefix" ] && [ "$(stat -c %U "$state" 2>/dev/null)" != "$user" ]; then
    change "give $state to $user" chown -R "$user:$user" "$state"
  fi
}

install_unit() {
  put_dir "$unitdir" 0755
  render_unit >"$tmp/unit"
  render_dropin >"$tmp/dropin"
  local before=$changes
  put_file "$tmp/unit" "$unit" 0644
  put_dir "$(dirname "$dropin")" 0755
  put_file "$tmp/dropin" "$dropin" 0644
  [ -n "$prefix" ] && return 0
  if [ ! -d /run/systemd/system ]; then  # an image build or chroot: enable works offline
    say "note: systemd is not running here; skipping daemon-reload"
  elif [ "$changes" != "$before" ]; then
    change "systemctl daemon-reload" systemctl daemon-reload
  fi
  if systemctl is-enabled --quiet edge-agent.service 2>/dev/null; then same "unit enabled"
  else change "systemctl enable edge-agent.service" systemctl enable --quiet edge-agent.service
  fi
}

do_install() {
  say "edge-agent install from $src${prefix:+ into $prefix}$([ "$dry_run" = 1 ] && echo ' (dry run)')"
  if is_jetson; then say "Jetson: $(head -n1 "$tegra")"; fi
  if [ -z "$prefix" ]; then install_system_user; else say "prefix: no user, no systemctl"; fi
  put_dir "$prefix/opt" 0755
  put_dir "$app" 0755
  install_venv
  put_dir "$etc" 0755
  install_config
  install_state
  install_unit
  if [ -x "$app/.venv/bin/edge-agent" ]; then
    # --schema-only: the model and cameras it names are set up after the install
    "$app/.venv/bin/edge-agent" config validate --schema-only "$etc/edge-agent.yaml" >/dev/null \
      || { echo "error: $etc/edge-agent.yaml does not validate (see above)" >&2; exit 1; }
  fi
}

# --- uninstall --------------------------------------------------------------------------------

remove() { [ ! -e "$1" ] || change "remove $1" rm -rf "$1"; }

do_uninstall() {
  say "edge-agent uninstall${prefix:+ from $prefix}$([ "$dry_run" = 1 ] && echo ' (dry run)')"
  if [ -z "$prefix" ] && [ -e "$unit" ]; then
    if [ -d /run/systemd/system ]; then
      change "systemctl disable --now edge-agent.service" \
        systemctl disable --now --quiet edge-agent.service
    else
      change "systemctl disable edge-agent.service" systemctl disable --quiet edge-agent.service
    fi
  fi
  remove "$dropin"
  [ ! -d "$(dirname "$dropin")" ] || rmdir "$(dirname "$dropin")" 2>/dev/null || true
  remove "$unit"
  if [ -z "$prefix" ] && [ "$changes" -gt 0 ] && [ -d /run/systemd/system ]; then
    change "systemctl daemon-reload" systemctl daemon-reload
  fi
  remove "$app"
  if [ "$purge" = 1 ]; then
    remove "$etc"
    remove "$state"
    if [ -z "$prefix" ] && id "$user" >/dev/null 2>&1; then
      change "delete user $user" userdel "$user"
    fi
  else
    [ ! -e "$etc" ] || say "kept: $etc (config; --purge removes it)"
    [ ! -e "$state" ] || say "kept: $state (data; --purge removes it)"
  fi
}

# One run at a time per target: two at once would build one venv together and race on the
# records. Dry runs change nothing and take no lock.
take_lock() {
  [ "$dry_run" = 0 ] || return 0
  local dir="${prefix:-/run/lock}"
  [ -n "$prefix" ] || [ -d "$dir" ] || dir=/var/lock
  mkdir -p "$dir"
  lockfile="$dir/.edge-agent-install.lock"
  exec 9>>"$lockfile"
  if ! flock -n 9; then
    echo "error: another edge-agent install or uninstall is running (it holds $lockfile);" \
         "run this again once it has finished" >&2
    exit 1
  fi
}

[ -z "$prefix" ] || check_prefix "$prefix"
take_lock
if [ "$uninstall" = 1 ]; then do_uninstall; else do_install; fi

if [ "$changes" = 0 ]; then
  say "nothing to change"
elif [ "$dry_run" = 1 ]; then
  say "dry run: $changes change(s) would be made; nothing was changed"
else
  say "done: $changes change(s)"
  if [ "$uninstall" = 0 ] && [ -z "$prefix" ]; then
    say "next: edit $etc/edge-agent.yaml (cameras, mqtt), then: sudo systemctl start edge-agent"
  fi
fi
