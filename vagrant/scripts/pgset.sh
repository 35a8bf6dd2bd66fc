#!/usr/bin/env bash
# Runs `cargo xtask up` on the control plane once every lab node is Ready: NFS server on this VM,
# volumes, agent image, the StatefulSet, verification. pgset's own steps are idempotent, so a
# re-run reports that nothing changed.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_env LAB_WORKERS LAB_NODE_IP

export KUBECONFIG=/etc/kubernetes/admin.conf
expected=$((LAB_WORKERS + 1))
for _ in $(seq 1 60); do
  registered="$(kubectl get nodes --no-headers | wc -l)"
  ((registered >= expected)) && break
  sleep 5
done
((registered >= expected)) ||
  die "$registered of $expected nodes have joined: bring the workers up (vagrant up), then run this step again (vagrant provision ${LAB_NODE_NAME:-pgset-cp} --provision-with pgset)"
kubectl wait --for=condition=Ready nodes --all --timeout=300s

log "cargo xtask up"
pgset-lab up

cat <<DONE
==> The lab is ready. On the control plane (vagrant ssh):
      sudo pgset-lab status
      sudo kubectl exec -it pgset-0 -c postgres -- psql -U postgres
    From the host, see vagrant/README.md ("Connect with psql"); the master Service
    forwarded to ${LAB_NODE_IP}:5432 by kubectl port-forward.
DONE
