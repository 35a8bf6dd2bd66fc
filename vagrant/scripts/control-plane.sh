#!/usr/bin/env bash
# Makes the control-plane node: `kubeadm init` on the private address (once), kubeconfigs for root
# and the vagrant user, the control plane untainted so a single node runs the pods, Flannel bound to
# the private interface, and a join command for the workers in the shared folder.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_env LAB_NODE_NAME LAB_NODE_IP LAB_K8S_VERSION LAB_POD_CIDR LAB_SERVICE_CIDR \
  LAB_FLANNEL_VERSION LAB_WORKERS LAB_SHARE

export KUBECONFIG=/etc/kubernetes/admin.conf

# --- kubeadm init, only on a node that has no cluster yet -------------------------------------
if [[ ! -f "$ROOT/etc/kubernetes/admin.conf" ]]; then
  log "kubeadm init (Kubernetes v${LAB_K8S_VERSION}, API on ${LAB_NODE_IP})"
  kubeadm init \
    --kubernetes-version "v${LAB_K8S_VERSION}" \
    --apiserver-advertise-address "$LAB_NODE_IP" \
    --apiserver-cert-extra-sans "$LAB_NODE_IP" \
    --pod-network-cidr "$LAB_POD_CIDR" \
    --service-cidr "$LAB_SERVICE_CIDR" \
    --node-name "$LAB_NODE_NAME"
fi

# --- kubectl works for root (sudo kubectl) and the vagrant user as is ---------------------------
write_file /root/.kube/config 0600 <"$ROOT/etc/kubernetes/admin.conf" || true
if write_file /home/vagrant/.kube/config 0600 <"$ROOT/etc/kubernetes/admin.conf"; then
  chown -R vagrant:vagrant "$ROOT/home/vagrant/.kube"
fi

for _ in $(seq 1 120); do
  kubectl get --raw /readyz >/dev/null 2>&1 && break
  sleep 2
done
kubectl get --raw /readyz >/dev/null || die "the API server on ${LAB_NODE_IP}:6443 did not become ready"

# --- one node runs everything: no NoSchedule taint on the control plane -------------------------
taint=node-role.kubernetes.io/control-plane
if kubectl get node "$LAB_NODE_NAME" -o jsonpath='{.spec.taints[*].key}' | grep -qw "$taint"; then
  log "untainting $LAB_NODE_NAME so it runs pods"
  kubectl taint node "$LAB_NODE_NAME" "${taint}:NoSchedule-"
fi

# --- Flannel on the private interface ----------------------------------------------------------
iface="$(ip -o -4 addr show | awk -v ip="$LAB_NODE_IP" '{ split($4, a, "/"); if (a[1] == ip) print $2 }')"
[[ -n "$iface" ]] || die "no interface carries ${LAB_NODE_IP}: is the private network up?"
upstream="$ROOT$STATE_DIR/kube-flannel-${LAB_FLANNEL_VERSION}.yml"
if [[ ! -s "$upstream" ]]; then
  mkdir -p "$(dirname "$upstream")"
  curl -fsSL --retry 5 -o "$upstream.part" \
    "https://github.com/flannel-io/flannel/releases/download/${LAB_FLANNEL_VERSION}/kube-flannel.yml"
  mv "$upstream.part" "$upstream"
fi
grep -q -- '- --kube-subnet-mgr' "$upstream" || die "kube-flannel.yml ${LAB_FLANNEL_VERSION} has no --kube-subnet-mgr argument to extend"
# Every node of a lab comes from the same box, so the private interface has the same name on all.
if sed -E \
  -e "s|^([[:space:]]*)- --kube-subnet-mgr$|&\n\1- --iface=${iface}|" \
  -e "s|\"Network\": \"[0-9./]+\"|\"Network\": \"${LAB_POD_CIDR}\"|" \
  "$upstream" | write_file "$STATE_DIR/kube-flannel.yml" ||
  ! kubectl get namespace kube-flannel >/dev/null 2>&1; then
  log "applying Flannel ${LAB_FLANNEL_VERSION} on ${iface}"
  kubectl apply -f "$ROOT$STATE_DIR/kube-flannel.yml"
fi
kubectl wait --for=condition=Ready "node/${LAB_NODE_NAME}" --timeout=300s

# --- the workers' join command, renewed only when its token is gone ----------------------------
if ((LAB_WORKERS > 0)); then
  join_file="$ROOT$LAB_SHARE/join-command"
  token=""
  if [[ -s "$join_file" ]]; then
    token="$(awk '{ for (i = 1; i < NF; i++) if ($i == "--token") print $(i + 1) }' "$join_file")"
  fi
  if [[ -z "$token" ]] || ! kubeadm token list | awk 'NR > 1 { print $1 }' | grep -qxF "$token"; then
    log "writing a join command for the workers to $LAB_SHARE"
    mkdir -p "$(dirname "$join_file")"
    kubeadm token create --ttl 24h --print-join-command >"$join_file.part"
    mv "$join_file.part" "$join_file"
  fi
fi

log "control plane ready: kubectl get nodes -o wide"
kubectl get nodes -o wide
