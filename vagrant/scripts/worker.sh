#!/usr/bin/env bash
# Makes a worker node: joins the cluster with the control plane's join command (once), then
# imports the agent image archive from the shared folder when it is new to this node.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_env LAB_NODE_NAME LAB_SHARE

join_file="$ROOT$LAB_SHARE/join-command"
if [[ ! -f "$ROOT/etc/kubernetes/kubelet.conf" ]]; then
  [[ -s "$join_file" ]] ||
    die "no join command at $LAB_SHARE/join-command: provision the control plane first (vagrant provision ${LAB_NODE_NAME%-*}-cp)"
  read -ra join <"$join_file"
  [[ "${join[0]:-}" == kubeadm && "${join[1]:-}" == join ]] ||
    die "$LAB_SHARE/join-command does not hold a kubeadm join command"
  log "joining the cluster at ${join[2]:-?}"
  "${join[@]}" --node-name "$LAB_NODE_NAME"
fi

archive="$ROOT$LAB_SHARE/pgset-agent.oci.tar"
[[ -s "$archive" ]] ||
  die "no agent image archive at $LAB_SHARE/pgset-agent.oci.tar: the control plane's image step writes it"
imported="$ROOT$STATE_DIR/agent-image.sha256"
sum="$(sha256sum "$archive" | awk '{ print $1 }')"
if [[ "$(cat "$imported" 2>/dev/null || true)" != "$sum" ]]; then
  log "importing the agent image into containerd (k8s.io)"
  ctr -n k8s.io images import "$archive"
  printf '%s\n' "$sum" | write_file "$STATE_DIR/agent-image.sha256" || true
fi
log "worker ${LAB_NODE_NAME} joined"
