#!/usr/bin/env bash
# tests/vm/vm.sh DIR CMD [ARG...]: boot Debian's own kernel (it has ipvlan,
# bonding, 8021q, dummy, which this machine's kernel lacks) under QEMU with
# software emulation (TCG: the /dev/kvm here is nested and far slower), with
# DIR as /vmtest (cwd) in a busybox initramfs, run CMD as root, stream its
# output, and exit with its status (125: the VM died without one; 124: timed
# out after SPINNERET_VM_TIMEOUT seconds, default 900).
#
# SPINNERET_VM_SRIOV=N adds N emulated Intel 82576 (igb) NICs, SR-IOV PFs
# with up to 7 real PCI VFs each (igbvf netdevs); that needs QEMU >= 8, so
# QEMU 10 is taken from bookworm-backports, unpacked under the cache (not
# installed). The PFs are wired to each other through a QEMU hub
# (SPINNERET_VM_WIRE=0: unplugged, no carrier). Everything is cached under SPINNERET_VM_CACHE
# (/var/cache/spinneret/vm). Written from ../shared/testenv/vm.md.
set -euo pipefail
die() { echo "vm.sh: $*" >&2; exit 126; }
[[ $# -ge 2 ]] || die "usage: vm.sh DIR CMD [ARG...]"
DIR=$(cd "$1" && pwd); shift
CACHE=${SPINNERET_VM_CACHE:-/var/cache/spinneret/vm}
SRIOV=${SPINNERET_VM_SRIOV:-0}
MEM=${SPINNERET_VM_MEM:-1024}
TIMEOUT=${SPINNERET_VM_TIMEOUT:-900}
# preloaded; nfnetlink and xfrm_user because netlink.NewHandleAt opens those
# families; the nftables modules of the coordinator's reply path autoload
MODULES="veth macvlan ipvlan bonding 8021q dummy bridge nfnetlink xfrm_user"
AUTOLOAD="nf_tables nft_ct nft_chain_nat nf_conntrack nft_compat nf_reject_ipv4 nf_reject_ipv6 af_packet vfio vfio_pci vfio_iommu_type1"
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"; flock 9

missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
command -v cpio >/dev/null || missing+=(cpio)
command -v depmod >/dev/null || missing+=(kmod)
command -v xz >/dev/null || missing+=(xz-utils)
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "vm.sh: installing ${missing[*]}" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

download() { # pkg dir [apt options...]: the .deb's path
  local pkg=$1 dir=$2; shift 2
  mkdir -p "$dir"
  ( cd "$dir" && apt-get -o APT::Sandbox::User=root "$@" download "$pkg" >/dev/null 2>&1 ) ||
    { apt-get update -qq >/dev/null 2>&1; ( cd "$dir" && apt-get -o APT::Sandbox::User=root "$@" download "$pkg" >/dev/null ) ||
      die "apt-get download $pkg failed"; }
  ls -t "$dir/${pkg%%=*}"_*.deb | head -1
}

# the kernel: Debian's linux-image-amd64 (6.1 on bookworm), unpacked once
KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
if [[ -z "$KPKG" ]]; then apt-get update -qq >/dev/null; KPKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}'); fi
[[ -n "$KPKG" ]] || die "cannot resolve linux-image-amd64"
KROOT=$CACHE/kernel/$KPKG
if [[ ! -f $KROOT/.done ]]; then
  echo "vm.sh: fetching $KPKG" >&2
  deb=$(download "$KPKG" "$CACHE/debs")
  rm -rf "$KROOT"; mkdir -p "$KROOT"; dpkg-deb -x "$deb" "$KROOT"; rm -f "$deb"
  KV=$(ls "$KROOT/lib/modules")
  # the ELF inside the XZ bzImage: QEMU boots it through its PVH entry,
  # ~3 s faster than decompressing under emulation
  for off in $(LC_ALL=C grep -obUaF $'\xfd7zXZ' "$KROOT/boot/vmlinuz-$KV" | cut -d: -f1); do
    tail -c +$((off + 1)) "$KROOT/boot/vmlinuz-$KV" | xz -dc --single-stream > "$KROOT/vmlinux" 2>/dev/null || true
    [[ "$(head -c 4 "$KROOT/vmlinux" | od -An -c | tr -d ' ')" == '177ELF' ]] && break
  done
  [[ "$(head -c 4 "$KROOT/vmlinux" | od -An -c | tr -d ' ')" == '177ELF' ]] || die "no vmlinux in $KPKG"
  touch "$KROOT/.done"
fi
KV=$(ls "$KROOT/lib/modules")
[[ -f $KROOT/lib/modules/$KV/modules.dep ]] || depmod -b "$KROOT" "$KV"
if [[ ! -x $CACHE/busybox/bin/busybox ]]; then
  deb=$(download busybox-static "$CACHE/debs")
  rm -rf "$CACHE/busybox"; dpkg-deb -x "$deb" "$CACHE/busybox"
fi

QEMU=qemu-system-x86_64
QEMU_ARGS=()
if [[ $SRIOV -gt 0 ]]; then
  MODULES+=" igb igbvf"
  Q=$CACHE/qemu-backports
  if [[ ! -f $Q/.done ]]; then
    echo "vm.sh: fetching QEMU from bookworm-backports (igb: SR-IOV)" >&2
    A=$CACHE/apt-backports; mkdir -p "$A/lists/partial"
    printf 'deb http://deb.debian.org/debian bookworm main\ndeb http://deb.debian.org/debian bookworm-updates main\ndeb http://deb.debian.org/debian bookworm-backports main\n' > "$A/sources.list"
    opts=(-o "Dir::Etc::SourceList=$A/sources.list" -o Dir::Etc::SourceParts=/nonexistent -o "Dir::State::Lists=$A/lists"
          -o "Dir::Cache::pkgcache=$A/pkgcache.bin" -o "Dir::Cache::srcpkgcache=$A/srcpkgcache.bin" -o APT::Default-Release=bookworm-backports)
    apt-get -o APT::Sandbox::User=root "${opts[@]}" update -qq >/dev/null || die "apt-get update (backports) failed"
    rm -rf "$Q"; mkdir -p "$Q/debs"
    for p in qemu-system-x86 qemu-system-common qemu-system-data seabios; do download "$p" "$Q/debs" "${opts[@]}" >/dev/null; done
    for d in "$Q"/debs/*.deb; do dpkg-deb -x "$d" "$Q/root"; done
    rm -rf "$Q/debs"; touch "$Q/.done"
  fi
  QEMU=$Q/root/usr/bin/qemu-system-x86_64
  export QEMU_MODULE_DIR=$Q/root/usr/lib/x86_64-linux-gnu/qemu
  QEMU_ARGS+=(-L "$Q/root/usr/share/qemu" -L "$Q/root/usr/share/seabios")
  # an emulated IOMMU, so a VF can be bound to vfio-pci (DPDK's driver;
  # Debian's kernel has no vfio no-IOMMU mode)
  QEMU_ARGS+=(-device intel-iommu)
  APPEND_EXTRA="intel_iommu=on"
  # every PF has a port on one QEMU hub: the PFs get carrier and are
  # wired to each other, so their VFs carry traffic (and VF VLANs are
  # enforced on that wire); SPINNERET_VM_WIRE=0 leaves them unplugged
  for ((i = 1; i <= SRIOV; i++)); do
    wire=()
    if [[ ${SPINNERET_VM_WIRE:-1} != 0 ]]; then
      QEMU_ARGS+=(-netdev "hubport,id=hp$i,hubid=0")
      wire=(",netdev=hp$i")
    fi
    QEMU_ARGS+=(-device "pcie-root-port,id=rp$i,slot=$i,chassis=$i" -device "igb,bus=rp$i,romfile=${wire[*]:-},mac=52:54:00:00:00:$(printf %02x "$i")")
  done
fi

# the base initramfs: busybox, dash as /bin/sh, iproute2's ip, the modules
key=$(printf '%s\n' "$KPKG" "$MODULES" "$AUTOLOAD" | cat - "$0" | sha256sum | cut -c1-12)
BASE=$CACHE/base-$key.cpio
if [[ ! -f $BASE ]]; then
  S=$(mktemp -d "$CACHE/stage.XXXXXX")
  mkdir -p "$S"/{bin,sbin,etc,proc,sys,dev,run,tmp,root,vmtest,usr/local/bin,lib/modules/$KV}
  cp "$CACHE/busybox/bin/busybox" "$S/bin/"
  for a in $("$S/bin/busybox" --list); do [[ $a == busybox ]] || ln -s busybox "$S/bin/$a"; done
  ln -s /bin/busybox "$S/sbin/modprobe"
  for b in dash ip; do
    p=$(command -v $b); rm -f "$S/bin/$b"; cp -L "$p" "$S/usr/local/bin/$b"
    for l in $(ldd "$p" | grep -o '/[^ ]*'); do mkdir -p "$S$(dirname "$l")"; cp -Ln "$l" "$S$l"; done
  done
  ln -sf /usr/local/bin/dash "$S/bin/sh"
  for m in $MODULES $AUTOLOAD; do
    modprobe -C /dev/null -d "$KROOT" -S "$KV" --show-depends "$m" 2>/dev/null | while read -r kind path _; do
      [[ $kind == insmod ]] || continue
      dst=$S${path#"$KROOT"}
      [[ -f $dst ]] || { mkdir -p "$(dirname "$dst")"; cp "$path" "$dst"; }
    done
  done
  cp "$KROOT/lib/modules/$KV"/modules.{order,builtin,builtin.modinfo} "$S/lib/modules/$KV/" 2>/dev/null || true
  depmod -b "$S" "$KV"
  printf '%s\n' $MODULES > "$S/etc/preload"
  printf '127.0.0.1 localhost\n::1 localhost\n' > "$S/etc/hosts"
  cat > "$S/init" <<'EOF'
#!/bin/sh
export PATH=/vmtest:/usr/local/bin:/usr/bin:/bin:/sbin HOME=/root TMPDIR=/tmp
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run; mount -t tmpfs tmpfs /tmp; mount -t tmpfs tmpfs /dev/shm
stty -F /dev/ttyS1 raw -echo 2>/dev/null
ip link set lo up
while read -r m; do
  case $m in bonding) modprobe bonding max_bonds=0;; dummy) modprobe dummy numdummies=0;; *) modprobe "$m";; esac || echo "vm: modprobe $m failed" >/dev/ttyS1
done </etc/preload
cd /vmtest
/bin/sh /etc/cmd >/dev/ttyS1 2>&1 </dev/null
printf '\nSPINNERET-VM-EXIT-%s=%d\n' "$(cat /etc/nonce)" "$?" >/dev/ttyS1
sync; poweroff -f
EOF
  chmod 755 "$S/init"
  ( cd "$S" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet ) > "$BASE"
  rm -rf "$S"
fi
flock -u 9; exec 9>&-

RUN=$(mktemp -d /tmp/spinneret-vm.XXXXXX)
trap 'rm -rf "$RUN"' EXIT
mkdir -p "$RUN/o/etc" "$RUN/o/vmtest"
cmd=""; for a in "$@"; do cmd+="'${a//\'/\'\\\'\'}' "; done
echo "$cmd" > "$RUN/o/etc/cmd"
NONCE=$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n'); echo "$NONCE" > "$RUN/o/etc/nonce"
cp -a "$DIR"/. "$RUN/o/vmtest/"
( cd "$RUN/o" && find . -mindepth 1 | cpio -o -H newc -R 0:0 --quiet ) > "$RUN/run.cpio"
cat "$BASE" "$RUN/run.cpio" > "$RUN/initrd"

set +e
timeout --foreground "$TIMEOUT" "$QEMU" "${QEMU_ARGS[@]}" -nodefaults -no-user-config -display none -no-reboot \
  -machine q35 -accel tcg -cpu max -m "$MEM" -smp 1 -kernel "$KROOT/vmlinux" -initrd "$RUN/initrd" \
  -append "console=ttyS0,115200 panic=-1 oops=panic quiet loglevel=4 rdinit=/init no_timer_check i8042.noaux i8042.nokbd i8042.nopnp mitigations=off ${APPEND_EXTRA:-}" \
  -serial "file:$RUN/console.log" -serial stdio </dev/null | tee "$RUN/out.log" | grep -v --line-buffered "^SPINNERET-VM-EXIT-$NONCE="
qrc=${PIPESTATUS[0]}
set -e
rc=$(tr -d '\r' < "$RUN/out.log" | sed -n "s/^SPINNERET-VM-EXIT-$NONCE=\([0-9]*\)$/\1/p" | tail -1)
if [[ -n "$rc" ]]; then exit "$rc"; fi
[[ $qrc == 124 ]] && { echo "vm.sh: timed out after ${TIMEOUT}s" >&2; exit 124; }
echo "vm.sh: the VM died without an exit status; console:" >&2; tail -30 "$RUN/console.log" >&2
exit 125
