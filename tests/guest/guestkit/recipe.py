"""The recipe of Ferry's test guest.

Every constant here is covered by the cache key (the hash of the builder's
syntax trees), so changing any of them rebuilds the guest.
"""

from __future__ import annotations

VM_NAME = "ferry-test-guest"
HOSTNAME = VM_NAME
ROOT_USER = "root"
ROOT_PASSWORD = "ferry"
LOGIN_MARKER = f"{HOSTNAME} login:"

SUITE = "bookworm"
ARCH = "amd64"
# Installed by debootstrap (minbase + what is needed to boot to a getty).
DEBOOTSTRAP_INCLUDE = [
    "systemd-sysv",
    "udev",
    "kmod",
    "initramfs-tools",
    "busybox",
    "iproute2",
]
# Installed afterwards with apt-get inside the chroot, once the initramfs and
# dpkg configuration below is in place (so the very first initramfs is the
# VMware-like one and excluded files are never unpacked).
# dbus: systemd-logind, which powers the guest off when the ACPI power button
# is pressed (libvirt's shutdown, QEMU's system_powerdown), cannot start
# without the system bus; minbase has none, so the guest ignored the button.
# (The kernel side is there already: udev loads the ``button`` module for
# LNXPWRBN and tags its input device ``power-switch`` for logind.)
APT_INSTALL = ["linux-image-amd64", "grub-pc", "dbus"]

DISK_SIZE = 2 * 1024**3  # virtual size of the disk, bytes
PART_START = 1024**2  # partition 1 starts at 1 MiB
SECTOR = 512
FS_LABEL = "ferry-root"

OVF_OS_TYPE = "debian11_64Guest"  # vmw:osType, like a vSphere export
OVF_OS_CIM_ID = 96  # CIM OS id "Debian 64-Bit"
OVF_OS_DESCRIPTION = "Debian GNU/Linux 11 (64-bit)"
OVF_HW_VERSION = "vmx-13"
VCPUS = 1
MEMORY_MB = 1024
NETWORK_NAME = "VM Network"

OVA_NAME = f"{VM_NAME}.ova"
OVF_NAME = f"{VM_NAME}.ovf"
MF_NAME = f"{VM_NAME}.mf"
VMDK_NAME = f"{VM_NAME}-disk1.vmdk"
RAW_NAME = "disk.raw"
META_NAME = "guest.json"

# The initramfs of a guest installed on VMware with MODULES=dep only carries the
# drivers of VMware's virtual hardware.  We cannot use MODULES=dep here: in a
# chroot, mkinitramfs would look at the *build machine's* root device (which
# may well be virtio, e.g. /dev/vda, and then virtio_blk would be pulled in).
# So we use MODULES=list with an explicit list: VMware's storage controllers
# (LSI Logic SPI/SAS, PVSCSI), IDE and SATA (VMware offers both; QEMU's default
# PC machine gives the boot test an IDE disk), sd_mod and ext4.  virtio_* is
# deliberately absent.  There is deliberately NO hook that strips virtio out of
# every initramfs: virt-v2v converts a Debian guest by appending virtio_blk,
# virtio_pci, ... to /etc/initramfs-tools/modules and running update-initramfs,
# and a stripping hook would sabotage exactly the conversion Ferry must prove.
INITRAMFS_MODULES = [
    "mptspi",
    "mptsas",
    "vmw_pvscsi",  # VMware SCSI controllers
    "ata_piix",
    "ata_generic",
    "ahci",  # IDE / SATA
    "sd_mod",
    "ext4",
    "crc32c_generic",  # disk + root fs (+ metadata_csum)
]
INITRAMFS_REQUIRED = ["ata_piix", "ahci", "sd_mod", "ext4", "mptspi", "vmw_pvscsi"]
VIRTIO_MODULES = ["virtio_blk", "virtio_pci", "virtio_scsi", "virtio_net"]
VIRTIO_CONFIG = ["VIRTIO", "VIRTIO_PCI", "VIRTIO_BLK", "SCSI_VIRTIO", "VIRTIO_NET"]

# Keep the guest small: no docs/man pages/translations, and no kernel modules
# for hardware a VM never has (sound, wifi, bluetooth, media, GPUs and NICs of
# real machines, FC/iSCSI HBAs, ...).  Everything a hypervisor emulates stays:
# virtio (all of it), VMware (vmxnet3, pvscsi, mptspi, vmwgfx), IDE/SATA/AHCI,
# e1000/e1000e, rtl8139, pcnet32, qxl/bochs/virtio-gpu, usb, file systems.
_MODULE_DIRS_EXCLUDED = [
    "sound",
    "drivers/media",
    "drivers/net/wireless",
    "drivers/infiniband",
    "drivers/staging",
    "drivers/iio",
    "drivers/comedi",
    "drivers/isdn",
    "drivers/bluetooth",
    "drivers/gpu/drm/amd",
    "drivers/gpu/drm/nouveau",
    "drivers/gpu/drm/i915",
    "drivers/gpu/drm/radeon",
    "net/wireless",
    "net/mac80211",
    "net/bluetooth",
    "drivers/net/ethernet",
    "drivers/net/can",
    "drivers/net/wwan",
    "drivers/net/ieee802154",
    "drivers/scsi/lpfc",
    "drivers/scsi/qla2xxx",
    "drivers/scsi/qla4xxx",
    "drivers/scsi/bfa",
    "drivers/scsi/cxgbi",
    "drivers/scsi/csiostor",
    "drivers/scsi/qedf",
    "drivers/scsi/qedi",
    "drivers/scsi/bnx2fc",
    "drivers/scsi/bnx2i",
    "drivers/scsi/be2iscsi",
    "drivers/scsi/fnic",
    "fs/ocfs2",
    "fs/gfs2",
]
_MODULE_DIRS_KEPT = [  # re-included below an excluded directory
    "drivers/net/ethernet/intel",
    "drivers/net/ethernet/realtek",
    "drivers/net/ethernet/amd",
]
DPKG_EXCLUDES = (
    "\n".join(
        [
            "# Ferry test guest: keep the image small.",
            "path-exclude=/usr/share/doc/*",
            "path-include=/usr/share/doc/*/copyright",
            "path-exclude=/usr/share/man/*",
            "path-exclude=/usr/share/info/*",
            "path-exclude=/usr/share/locale/*",
            "path-include=/usr/share/locale/locale.alias",
            "path-exclude=/usr/share/lintian/*",
        ]
        + [
            f"path-exclude={prefix}/lib/modules/*/kernel/{d}/*"
            for d in _MODULE_DIRS_EXCLUDED
            for prefix in ("", "/usr")
        ]
        + [
            f"path-include={prefix}/lib/modules/*/kernel/{d}/*"
            for d in _MODULE_DIRS_KEPT
            for prefix in ("", "/usr")
        ]
    )
    + "\n"
)

# Fixed ext4 feature set (independent of the build host's /etc/mke2fs.conf):
# everything here is understood by bookworm's kernel, e2fsprogs and GRUB 2.06
# (which cannot read metadata_csum_seed, enabled by default elsewhere).
MKE2FS_CONF = """\
[defaults]
	base_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
	default_mntopts = acl,user_xattr
	enable_periodic_fsck = 0
	blocksize = 4096
	inode_size = 256
	inode_ratio = 16384

[fs_types]
	ext4 = {
		features = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
	}
"""

GRUB_DEFAULTS = """\
# Ferry test guest: serial console, boot quickly, no recovery entries.
GRUB_TIMEOUT=1
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200n8"
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
GRUB_DISABLE_RECOVERY=true
GRUB_DISABLE_OS_PROBER=true
"""

NETWORKD_DHCP = """\
# Ferry test guest: DHCP on the (first) ethernet NIC.
[Match]
Name=en* eth*

[Network]
DHCP=yes
"""
