#!/usr/bin/env bash
# Prepares the real-kernel oracle: host packages, Debian sid's current amd64
# kernel and the modules the probe needs, the test importer module (kmod/)
# built against that kernel's headers, the static probe and the initramfs.
# Idempotent; everything lands in $ORACLE_CACHE (default
# $CARGO_TARGET_DIR/oracle, else target/oracle), never in the repository.
#
# Exit status: 0 ready (the last line is "ready <release>"); 3 skipped: the
# kernel or its header packages cannot be downloaded (the reason is in
# $ORACLE_CACHE/status and on stderr); 1 any other failure.
#
# The sid archive is reached through a private apt configuration (its own
# sources list, state and cache directories); the system's apt sources are
# never changed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${ORACLE_CACHE:-${CARGO_TARGET_DIR:-$repo/target}/oracle}"
mkdir -p "$cache"
cache="$(cd "$cache" && pwd)"
status="$cache/status"
skip() { echo "skipped: $*" >"$status"; echo "oracle setup SKIPPED: $*" >&2; exit 3; }
fail() { echo "failed: $*" >"$status"; echo "oracle setup FAILED: $*" >&2; exit 1; }

# 1. Host packages (apt-get update once, only when something is missing).
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx insmod || need+=(busybox-static)
command -v musl-gcc >/dev/null || need+=(musl-tools)
command -v cpio >/dev/null || need+=(cpio)
command -v zstd >/dev/null || need+=(zstd)
command -v xz >/dev/null || need+=(xz-utils)
command -v modinfo >/dev/null || need+=(kmod)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing host packages: ${need[*]}" >&2
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq || fail "apt-get update"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    qemu-system-x86 busybox-static musl-tools cpio zstd xz-utils kmod >&2 || fail "apt-get install"
fi

# 2. The private apt configuration for sid.
apt_dir="$cache/apt"
mkdir -p "$apt_dir/etc" "$apt_dir/state/lists/partial" "$apt_dir/cache/archives/partial"
mirror="${ORACLE_MIRROR:-http://deb.debian.org/debian}"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror sid main" \
  >"$apt_dir/etc/sources.list"
apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/etc/sources.list" -o Dir::Etc::SourceParts=/dev/null
  -o "Dir::State=$apt_dir/state" -o Dir::State::status=/dev/null -o "Dir::Cache=$apt_dir/cache"
  -o APT::Architecture=amd64 -o Acquire::Languages=none -o APT::Sandbox::User=root)
[ "$(cat "$apt_dir/mirror" 2>/dev/null)" = "$mirror" ] || rm -f "$apt_dir"/state/lists/*Packages*
echo "$mirror" >"$apt_dir/mirror"
fresh=$(find "$apt_dir/state/lists" -maxdepth 1 -name '*Packages*' -mmin -360 2>/dev/null | head -1)
if [ -z "$fresh" ]; then
  apt-get "${apt_opts[@]}" -qq --error-on=any update >&2 || skip "cannot reach the Debian sid archive (apt-get update failed)"
fi
image=$(apt-cache "${apt_opts[@]}" depends linux-image-amd64 2>/dev/null \
  | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | head -1 || true)
[ -n "$image" ] || skip "sid's linux-image-amd64 names no linux-image-*-amd64 package"
release="${image#linux-image-}"
ver="${release%%[-+]*}"
major="${ver%%.*}"; rest="${ver#*.}"; minor="${rest%%.*}"
if [ "$major" -lt 7 ] || { [ "$major" -eq 7 ] && [ "$minor" -lt 1 ]; }; then
  skip "sid's kernel is $release, older than 7.1 (no revoke series)"
fi
# Split packages (linux-binary + linux-modules) when sid has them, else the image itself.
pkgs=$(apt-cache "${apt_opts[@]}" depends "$image" 2>/dev/null \
  | sed -n 's/^ *Depends: \(linux-\(binary\|modules\)-[^ ]*\)$/\1/p' | sort -u || true)
[ -n "$pkgs" ] || pkgs="$image"

kdir="$cache/kernel/$release"
if [ ! -f "$kdir/.done" ]; then
  rm -rf "$kdir"; mkdir -p "$kdir/debs" "$kdir/root"
  # shellcheck disable=SC2086
  (cd "$kdir/debs" && apt-get "${apt_opts[@]}" -qq download $pkgs >&2) \
    || skip "downloading $pkgs from sid failed (Debian keeps only current versions)"
  for d in "$kdir"/debs/*.deb; do dpkg-deb -x "$d" "$kdir/root"; done
  mdir=$(find "$kdir/root" -type d -path "*/modules/$release" | head -1)
  vmlinuz=$(find "$kdir/root" \( -name "vmlinuz-$release" -o -path "*/modules/$release/vmlinuz" \) | head -1)
  [ -n "$mdir" ] && [ -n "$vmlinuz" ] || fail "the kernel packages of $release hold no vmlinuz or modules"
  cp "$vmlinuz" "$kdir/vmlinuz"
  echo "$mdir" >"$kdir/moddir"
  rm -rf "$kdir/debs"
  touch "$kdir/.done"
fi
mdir=$(cat "$kdir/moddir")

# 3. Modules of each part, dependencies first (modinfo -F depends).
declare -A path_of=()
while IFS= read -r f; do
  b="${f##*/}"; b="${b%.ko*}"; path_of[$b]="$f"; path_of[${b//-/_}]="$f"
done < <(find "$mdir" -name '*.ko*')
order=()
declare -A seen=()
visit() {
  local m="$1" f deps d
  [ -n "${seen[$m]:-}" ] && return; seen[$m]=1
  f="${path_of[$m]:-}"
  [ -n "$f" ] || fail "module $m not found in $release"
  deps=$(modinfo -F depends "$f")
  for d in ${deps//,/ }; do visit "$d"; done
  order+=("$m")
}
root="$cache/initramfs-root"
rm -rf "$root"; mkdir -p "$root"/{bin,proc,sys,dev,lib/modules}
for part in abi vfio kmod; do
  order=(); seen=()
  case "$part" in
    abi) mods="vgem" ;;
    vfio|kmod) mods="vgem vfio vfio_iommu_type1 vfio-pci" ;;
  esac
  for m in $mods; do visit "$m"; done
  : >"$root/modules-$part.order"
  for m in "${order[@]}"; do
    f="${path_of[$m]}"
    case "$f" in
      *.xz) xz -dc "$f" >"$root/lib/modules/$m.ko" ;;
      *.zst) zstd -qdc "$f" >"$root/lib/modules/$m.ko" ;;
      *) cp "$f" "$root/lib/modules/$m.ko" ;;
    esac
    echo "$m" >>"$root/modules-$part.order"
  done
done

# 4. The test importer module (kmod/), built against this very kernel: a
# throw-away sid root made from the registry only (the kernel's headers, its
# kbuild, the gcc the kernel was built with, make, a shell and coreutils;
# unpacked with dpkg-deb, no maintainer scripts) and `make -C
# /usr/src/linux-headers-$release M=...` inside it with chroot. Cached by the
# module source's hash; the build root is reused across source changes.
ksrc_hash=$(cat "$here"/kmod/Makefile "$here"/kmod/*.c "$here"/kmod/*.h | sha256sum | cut -c1-16)
kb="$cache/kbuild/$release"
# Build roots of kernels sid no longer has are of no use (about 400 MB each).
for old in "$cache"/kbuild/*; do
  [ -d "$old" ] && [ "$old" != "$kb" ] && rm -rf "$old"
done
kmod_out="$kb/dmabuf_test_importer-$ksrc_hash.ko"
if [ ! -f "$kmod_out" ]; then
  t_start=$(date +%s)
  if [ ! -f "$kb/.root-done" ]; then
    rm -rf "$kb"; mkdir -p "$kb/debs" "$kb/root"
    kpkgs=$(apt-get "${apt_opts[@]}" -s --no-install-recommends install "linux-headers-$release" \
      make coreutils dash bash sed grep mawk findutils diffutils libc6-dev 2>/dev/null \
      | sed -n 's/^Inst \([^ ]*\) .*/\1/p' || true)
    [ -n "$kpkgs" ] || skip "sid has no installable linux-headers-$release (Debian keeps only current versions)"
    # shellcheck disable=SC2086
    (cd "$kb/debs" && apt-get "${apt_opts[@]}" -qq download $kpkgs >&2) \
      || skip "downloading linux-headers-$release and its compiler from sid failed"
    # base-files first: it holds the merged-/usr links (/bin -> usr/bin).
    for d in "$kb"/debs/base-files_*.deb "$kb"/debs/*.deb; do dpkg-deb -x "$d" "$kb/root"; done
    [ -x "$kb/root/usr/bin/awk" ] || ln -sf mawk "$kb/root/usr/bin/awk"
    [ -d "$kb/root/usr/src/linux-headers-$release" ] || fail "linux-headers-$release unpacked no /usr/src/linux-headers-$release"
    rm -rf "$kb/debs"
    touch "$kb/.root-done"
  fi
  rm -rf "$kb/root/build"; mkdir -p "$kb/root/build"
  cp -r "$here/kmod" "$kb/root/build/kmod"
  # objtool reads /proc; unshare keeps the mounts private and drops them on exit.
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo unshare --mount --fork /bin/sh -c "mount -t proc proc '$kb/root/proc' && mount --bind /dev '$kb/root/dev' && \
    chroot '$kb/root' /bin/sh -c 'cd /build/kmod && make -s -C /usr/src/linux-headers-$release M=/build/kmod'" >&2 \
    || fail "building the test importer module against linux-headers-$release"
  rm -f "$kb"/dmabuf_test_importer-*.ko
  cp "$kb/root/build/kmod/dmabuf_test_importer.ko" "$kmod_out.tmp" && mv "$kmod_out.tmp" "$kmod_out"
  echo "kmod build: $(( $(date +%s) - t_start )) s" >&2
fi
cp "$kmod_out" "$root/lib/modules/dmabuf_test_importer.ko"
echo dmabuf_test_importer >>"$root/modules-kmod.order"

# 5. The probe and the initramfs.
musl-gcc -static -O1 -Wall -I"$here/kmod" -o "$root/probe" "$here/probe/probe.c" -lpthread >&2 || fail "building the probe"
cp /bin/busybox "$root/bin/busybox"
install -m 0755 "$here/probe/init.sh" "$root/init"
(cd "$root" && find . | sort | cpio -o -H newc --quiet | gzip -1) >"$cache/initramfs.cpio.gz.tmp"
mv "$cache/initramfs.cpio.gz.tmp" "$cache/initramfs.cpio.gz"
cp "$kdir/vmlinuz" "$cache/vmlinuz"
echo "$release" >"$cache/release"
echo "ready $release" >"$status"
echo "ready $release"
