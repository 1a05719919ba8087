#!/bin/busybox sh
# /init of the oracle's initramfs: mount the pseudo file systems, load the
# modules of this part in dependency order, bind the test device to
# vfio-pci for the VFIO part, run the probe, power off (qemu runs with
# -no-reboot, so it exits). Every line meant for the harness starts "@@".
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
part=abi
for w in $(cat /proc/cmdline); do
  case "$w" in oracle.part=*) part="${w#oracle.part=}" ;; esac
done
echo "@@INIT part=$part"
for m in $(cat /modules-$part.order); do
  insmod "/lib/modules/$m.ko" || echo "@@MODULE-FAILED $m"
done
if [ "$part" = vfio ] || [ "$part" = kmod ]; then
  bdf=
  for d in /sys/bus/pci/devices/*; do
    if [ "$(cat "$d/vendor")" = 0x1234 ] && [ "$(cat "$d/device")" = 0x11e8 ]; then bdf="${d##*/}"; fi
  done
  if [ -z "$bdf" ]; then
    echo "@@FATAL no-edu-device"
  elif [ ! -e "/sys/bus/pci/devices/$bdf/iommu_group" ]; then
    echo "@@FATAL no-iommu-group device=$bdf"
  else
    echo vfio-pci > "/sys/bus/pci/devices/$bdf/driver_override"
    echo "$bdf" > /sys/bus/pci/drivers_probe
    group="$(basename "$(readlink "/sys/bus/pci/devices/$bdf/iommu_group")")"
    echo "@@VFIO device=$bdf group=$group driver=$(basename "$(readlink "/sys/bus/pci/devices/$bdf/driver")")"
    /probe "$part" "$bdf" "$group"
    echo "@@PROBE-EXIT part=$part status=$?"
  fi
else
  /probe "$part"
  echo "@@PROBE-EXIT part=$part status=$?"
fi
reboot -f
