#!/usr/bin/env bash
# Builds the throw-away Debian 12 guest the NFS kernel test boots: a debootstrap root with
# systemd, the Debian kernel, the NFS server, sshd and SELinux (permissive), plus the test's
# ssh key. The result is cached under CACHE_ROOT/<key>, where the key is a hash of the package
# list and the script version, and reused while it is complete.
#
# usage: build-guest.sh CACHE_ROOT     prints the guest directory on stdout
# The guest directory holds disk.img (an ext4 root file system made with mkfs.ext4 -d; boot it
# with snapshot=on so it stays pristine), vmlinuz, initrd.img and id_ed25519.
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 CACHE_ROOT" >&2
  exit 2
fi
cache_root=$1
mirror=${PGSET_DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
# Bump when the steps below change in a way the package list does not show.
script_version=5
packages=(
  systemd-sysv udev dbus kmod iproute2 netbase procps
  linux-image-amd64 initramfs-tools
  nfs-kernel-server nfs-common rpcbind
  openssh-server
  selinux-basics selinux-policy-default selinux-utils policycoreutils
  firewalld libpam-systemd
)

key=$(printf '%s\n' "$script_version" "$suite" "${packages[@]}" | sha256sum | cut -c1-16)
guest=$cache_root/debian12-nfs-$key
if [ -f "$guest/complete" ]; then
  echo "$guest"
  exit 0
fi

for tool in debootstrap ssh-keygen mkfs.ext4; do
  command -v "$tool" >/dev/null || { echo "$tool not found" >&2; exit 1; }
done
if [ "$(id -u)" -ne 0 ]; then
  echo "debootstrap needs root" >&2
  exit 1
fi

rm -rf "$guest"
mkdir -p "$guest"
root=$guest/rootfs
include=$(IFS=,; echo "${packages[*]}")

echo "debootstrap $suite into $root" >&2
debootstrap --variant=minbase --include="$include" "$suite" "$root" "$mirror" >"$guest/debootstrap.log" 2>&1 || {
  tail -n 40 "$guest/debootstrap.log" >&2
  exit 1
}

echo "pgset-nfs-guest" >"$root/etc/hostname"
cat >"$root/etc/hosts" <<'EOF'
127.0.0.1	localhost
127.0.1.1	pgset-nfs-guest
::1		localhost ip6-localhost ip6-loopback
EOF
cat >"$root/etc/fstab" <<'EOF'
/dev/vda	/	ext4	rw,errors=remount-ro	0	1
EOF

# User-mode networking: DHCP on the virtio NIC.
mkdir -p "$root/etc/systemd/network"
cat >"$root/etc/systemd/network/10-virtio.network" <<'EOF'
[Match]
Name=en*

[Network]
DHCP=ipv4
EOF
chroot "$root" systemctl enable systemd-networkd.service ssh.service >/dev/null 2>&1

# SELinux: enabled and permissive. The kernel command line selects it; the file system is not
# relabelled (permissive mode allows the unlabelled files).
mkdir -p "$root/etc/selinux"
cat >"$root/etc/selinux/config" <<'EOF'
SELINUX=permissive
SELINUXTYPE=default
EOF
rm -f "$root/.autorelabel"

# Root logs in with the test's key only.
ssh-keygen -q -t ed25519 -N '' -C pgset-nfs-test -f "$guest/id_ed25519"
install -d -m 0700 "$root/root/.ssh"
install -m 0600 "$guest/id_ed25519.pub" "$root/root/.ssh/authorized_keys"
mkdir -p "$root/etc/ssh/sshd_config.d"
cat >"$root/etc/ssh/sshd_config.d/pgset.conf" <<'EOF'
PermitRootLogin prohibit-password
PasswordAuthentication no
UseDNS no
EOF

# Kernel and initramfs for -kernel/-initrd.
vmlinuz=$(find "$root/boot" -maxdepth 1 -name 'vmlinuz-*' | sort | tail -n 1)
initrd=$(find "$root/boot" -maxdepth 1 -name 'initrd.img-*' | sort | tail -n 1)
if [ -z "$vmlinuz" ] || [ -z "$initrd" ]; then
  echo "no kernel or initramfs in $root/boot" >&2
  exit 1
fi
cp "$vmlinuz" "$guest/vmlinuz"
cp "$initrd" "$guest/initrd.img"
# firewalld is there for the test to start when it wants it: not at boot.
chroot "$root" systemctl disable firewalld.service >/dev/null 2>&1
# The NFS server package, kept for the test that installs it again offline (the guest has no
# network): apt-get finds it in its archive cache.
mkdir -p "$root/root/debs"
cp "$root"/var/cache/apt/archives/nfs-kernel-server_*.deb "$root/root/debs/"
chroot "$root" apt-get clean
mkfs.ext4 -q -F -d "$root" "$guest/disk.img" 3G >&2
rm -rf "$root"
printf '%s\n' "${packages[@]}" >"$guest/packages"
touch "$guest/complete"
echo "$guest"
