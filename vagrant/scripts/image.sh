#!/usr/bin/env bash
# Multi-node labs: builds the agent's image archive into the shared folder, where every worker
# imports it into its containerd, and imports it on the control plane too.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_env LAB_SHARE

mkdir -p "$ROOT$LAB_SHARE"
log "building the agent image archive into $LAB_SHARE"
pgset-lab image --out "$LAB_SHARE/pgset-agent.oci.tar" --import
