#!/usr/bin/env bash
# Gives the control plane what building and running pgset needs: a Rust toolchain (rustup, minimal
# profile) for the vagrant user, the C toolchain and static glibc the agent's static binary links
# against, the lab's pgset spec, and `pgset-lab`, which runs `cargo xtask` as root with both.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_env LAB_CONTROL_PLANE_IP LAB_REPLICAS LAB_STORAGE LAB_REPO

# glibc-static lives in CodeReady Builder (crb) on Rocky Linux 9.
ensure_packages dnf-plugins-core
if ! dnf repolist --enabled | awk '{ print $1 }' | grep -qx crb; then
  log "enabling the crb repository"
  dnf config-manager --set-enabled crb
fi
ensure_packages gcc glibc-static git

if [[ ! -x "$ROOT/home/vagrant/.cargo/bin/rustup" ]]; then
  log "installing Rust (rustup, minimal profile, stable) for vagrant"
  curl -fsSL --retry 5 https://sh.rustup.rs |
    sudo -u vagrant -H sh -s -- -y --profile minimal --default-toolchain stable
fi

write_file "$CONFIG_DIR/pgset.yaml" <<SPEC || true
# The lab's pgset spec, written by vagrant/scripts/toolchain.sh from vagrant/settings.yaml.
replicas: ${LAB_REPLICAS}
storage:
  mode: ${LAB_STORAGE}
nfs:
  server: ${LAB_CONTROL_PLANE_IP}
SPEC

# Root builds with the vagrant user's toolchain (read only) and its own cargo home and target dir.
write_file /usr/local/bin/pgset-lab 0755 <<WRAPPER || true
#!/usr/bin/env bash
# cargo xtask in the pgset lab: as root, with the cluster's kubeconfig and the lab's spec.
set -euo pipefail
export KUBECONFIG=/etc/kubernetes/admin.conf
export RUSTUP_HOME=/home/vagrant/.rustup CARGO_HOME=/root/.cargo
export CARGO_TARGET_DIR=${STATE_DIR}/target
export PATH="/home/vagrant/.cargo/bin:\$PATH"
cd ${LAB_REPO}
task="\${1:?usage: pgset-lab TASK [ARGS...], e.g. pgset-lab status}"
shift
case "\$task" in
  up | down | nfs | volumes | image | deploy | verify | scale | status)
    exec cargo xtask "\$task" --config ${CONFIG_DIR}/pgset.yaml "\$@" ;;
  *)
    exec cargo xtask "\$task" "\$@" ;;
esac
WRAPPER

log "Rust: $(sudo -u vagrant -H "$ROOT/home/vagrant/.cargo/bin/rustc" --version)"
