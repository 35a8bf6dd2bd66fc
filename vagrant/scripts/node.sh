#!/usr/bin/env bash
# Prepares any lab node for kubeadm: host names, swap (zram too) off, kernel modules and sysctls,
# containerd with the CRI plugin and the systemd cgroup driver, pinned kubelet/kubeadm/kubectl
# with kubelet on the private address, nfs-utils, and firewalld opened to the lab's networks.
# SELinux stays enforcing. Every step checks before it changes.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_env LAB_NODE_NAME LAB_NODE_IP LAB_HOSTS LAB_K8S_VERSION LAB_POD_CIDR LAB_SERVICE_CIDR

k8s_minor="${LAB_K8S_VERSION%.*}"

# --- names of all lab nodes ---------------------------------------------------------------
for entry in $LAB_HOSTS; do
  ensure_line /etc/hosts "${entry%%=*} ${entry#*=}"
done

# --- swap off, now and at boot (the fstab entry and Rocky's zram swap) ---------------------
if [[ -n "$(swapon --show --noheadings)" ]]; then
  log "turning swap off"
  swapoff -a
fi
if grep -qE '^[^#].*[[:space:]]swap[[:space:]]' "$ROOT/etc/fstab" 2>/dev/null; then
  log "commenting out swap in /etc/fstab"
  sed -i -E 's/^([^#].*[[:space:]]swap[[:space:]].*)$/# \1/' "$ROOT/etc/fstab"
fi
if rpm -q zram-generator >/dev/null 2>&1; then
  # An empty /etc/systemd/zram-generator.conf overrides the packaged defaults: no zram device.
  write_file /etc/systemd/zram-generator.conf </dev/null || true
  if [[ "$(systemctl is-enabled dev-zram0.swap 2>/dev/null || true)" != masked ]]; then
    systemctl mask dev-zram0.swap
  fi
fi

# --- kernel modules and sysctls for the pod network -------------------------------------------
printf 'overlay\nbr_netfilter\n' | write_file /etc/modules-load.d/kubernetes.conf || true
for module in overlay br_netfilter; do
  [[ -d "$ROOT/sys/module/$module" ]] || modprobe "$module"
done
sysctl_conf="net.bridge.bridge-nf-call-iptables = 1
net.bridge.bridge-nf-call-ip6tables = 1
net.ipv4.ip_forward = 1"
printf '%s\n' "$sysctl_conf" | write_file /etc/sysctl.d/99-kubernetes.conf || true
for key in net/bridge/bridge-nf-call-iptables net/bridge/bridge-nf-call-ip6tables net/ipv4/ip_forward; do
  if [[ "$(cat "$ROOT/proc/sys/$key" 2>/dev/null || true)" != 1 ]]; then
    log "applying sysctls"
    sysctl --system >/dev/null
    break
  fi
done

# --- SELinux stays enforcing ------------------------------------------------------------------
mode="$(getenforce 2>/dev/null || echo unknown)"
if [[ "$mode" != Enforcing ]]; then
  log "warning: SELinux is $mode; the lab is meant to run enforcing (pgset works with it)"
fi

# --- package sources: Docker's CE repository (the usual source of containerd.io on EL9) and ------
# --- pkgs.k8s.io for kubelet, kubeadm, kubectl, pinned and kept out of dnf upgrades -------------
write_file /etc/yum.repos.d/docker-ce.repo <<'REPO' || true
[docker-ce-stable]
name=Docker CE Stable - $basearch
baseurl=https://download.docker.com/linux/centos/$releasever/$basearch/stable
enabled=1
gpgcheck=1
gpgkey=https://download.docker.com/linux/centos/gpg
REPO
write_file /etc/yum.repos.d/kubernetes.repo <<REPO || true
[kubernetes]
name=Kubernetes v${k8s_minor}
baseurl=https://pkgs.k8s.io/core:/stable:/v${k8s_minor}/rpm/
enabled=1
gpgcheck=1
gpgkey=https://pkgs.k8s.io/core:/stable:/v${k8s_minor}/rpm/repodata/repomd.xml.key
exclude=kubelet kubeadm kubectl cri-tools kubernetes-cni
REPO
ensure_packages "kubelet-${LAB_K8S_VERSION}" "kubeadm-${LAB_K8S_VERSION}" "kubectl-${LAB_K8S_VERSION}"
# kubelet registers the node with its private address, not the NAT address every VM shares.
if printf 'KUBELET_EXTRA_ARGS=--node-ip=%s\n' "$LAB_NODE_IP" | write_file /etc/sysconfig/kubelet; then
  restart_if_active kubelet
fi
if ! systemctl is-enabled --quiet kubelet; then
  systemctl enable kubelet
fi

# --- containerd -----------------------------------------------------------------------------
ensure_packages containerd.io container-selinux
# containerd's default configuration (the packaged file disables the CRI plugin) with the systemd
# cgroup driver, and the pause image of this Kubernetes release as the sandbox image.
pause_image="$(kubeadm config images list --kubernetes-version "v${LAB_K8S_VERSION}" | grep '/pause:')" ||
  die "kubeadm names no pause image for Kubernetes v${LAB_K8S_VERSION}"
containerd_config="$(containerd config default | sed -E \
  -e 's/^([[:space:]]*SystemdCgroup = )false/\1true/' \
  -e "s|^([[:space:]]*sandbox_image = )\"[^\"]*\"|\\1\"${pause_image}\"|" \
  -e "s|^([[:space:]]*sandbox = )'[^']*'|\\1'${pause_image}'|")"
grep -q 'SystemdCgroup = true' <<<"$containerd_config" ||
  die "containerd's default configuration has no SystemdCgroup option to turn on"
if printf '%s\n' "$containerd_config" | write_file /etc/containerd/config.toml; then
  restart_if_active containerd
fi
ensure_service containerd
write_file /etc/crictl.yaml <<'CRICTL' || true
runtime-endpoint: unix:///run/containerd/containerd.sock
image-endpoint: unix:///run/containerd/containerd.sock
CRICTL

# --- NFS client on every node (the control plane also serves); tc for kubeadm's preflight -------
ensure_packages nfs-utils iproute-tc

# --- firewalld, when it runs: trust the private, pod and Service networks ----------------------
if systemctl is-active --quiet firewalld; then
  private_net="${LAB_NODE_IP%.*}.0/24"
  reload=0
  for source in "$private_net" "$LAB_POD_CIDR" "$LAB_SERVICE_CIDR"; do
    if ! firewall-cmd --permanent --zone=trusted --query-source="$source" >/dev/null; then
      firewall-cmd --permanent --zone=trusted --add-source="$source" >/dev/null
      reload=1
    fi
  done
  if ((reload)); then
    log "firewalld: trusted $private_net, $LAB_POD_CIDR, $LAB_SERVICE_CIDR"
    firewall-cmd --reload >/dev/null
  fi
fi

log "node ready for kubeadm (Kubernetes ${LAB_K8S_VERSION}, node IP ${LAB_NODE_IP})"
