# shellcheck shell=bash
# Helpers shared by the lab's provisioning scripts: settings from the Vagrantfile, logging, and
# edits that check before they change, so `vagrant provision` can run any number of times.
#
# LAB_ROOT prefixes every file the scripts read or write (empty on a VM; the tests point it at a
# temporary tree and put recording stand-ins for the system commands on PATH).

ROOT="${LAB_ROOT:-}"
# The two directories below are used by the scripts that source this file.
# shellcheck disable=SC2034
# Files the scripts keep for themselves (downloaded manifests, checksums).
STATE_DIR="/var/lib/pgset-lab"
# shellcheck disable=SC2034
# Files the lab writes for pgset (its spec) and the wrapper that runs cargo xtask with them.
CONFIG_DIR="/etc/pgset-lab"

log() {
  printf '==> [%s] %s\n' "${LAB_NODE_NAME:-lab}" "$*"
}

die() {
  printf 'error: [%s] %s\n' "${LAB_NODE_NAME:-lab}" "$*" >&2
  exit 1
}

# Fails unless every named variable is set (the Vagrantfile sets them from settings.yaml).
require_env() {
  local name
  for name in "$@"; do
    [[ -n "${!name:-}" ]] || die "$name is not set: run this script through the Vagrantfile (vagrant provision)"
  done
}

# Writes stdin to PATH (mode MODE, default 0644) only when the content differs.
# Returns 0 when the file changed, 1 when it already had this content.
write_file() {
  local path="$ROOT$1" mode="${2:-0644}" tmp
  tmp="$(mktemp)"
  cat >"$tmp"
  if [[ -f "$path" ]] && cmp -s "$tmp" "$path"; then
    rm -f "$tmp"
    return 1
  fi
  mkdir -p "$(dirname "$path")"
  install -m "$mode" "$tmp" "$path"
  rm -f "$tmp"
  log "wrote $1"
  return 0
}

# Appends LINE to FILE unless the file already has it as a whole line.
ensure_line() {
  local path="$ROOT$1" line="$2"
  mkdir -p "$(dirname "$path")"
  touch "$path"
  if ! grep -qxF -- "$line" "$path"; then
    printf '%s\n' "$line" >>"$path"
    log "added '$line' to $1"
  fi
}

# Installs the packages (name or name-version) that rpm does not already know.
ensure_packages() {
  local missing=() pkg
  for pkg in "$@"; do
    rpm -q "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if ((${#missing[@]} > 0)); then
    log "installing ${missing[*]}"
    dnf install -y --disableexcludes=all "${missing[@]}"
  fi
}

# Enables UNIT at boot and starts it, each only when not already so.
ensure_service() {
  local unit="$1"
  if ! systemctl is-enabled --quiet "$unit"; then
    systemctl enable "$unit"
  fi
  if ! systemctl is-active --quiet "$unit"; then
    systemctl start "$unit"
  fi
}

# Restarts UNIT when it runs (after its configuration changed).
restart_if_active() {
  if systemctl is-active --quiet "$1"; then
    log "restarting $1"
    systemctl restart "$1"
  fi
}
