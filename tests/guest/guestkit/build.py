"""The build itself: debootstrap into a chroot, configure, make the disk, package
the OVA (OVF 1.0 + streamOptimized VMDK + manifest)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from guestkit.host import (
    UNSHARE,
    Runner,
    apt_proxy,
    detect_mirror,
    libguestfs_env,
    require_tools,
    rmtree,
)
from guestkit.ovf import ovf_envelope
from guestkit.recipe import (
    APT_INSTALL,
    ARCH,
    DEBOOTSTRAP_INCLUDE,
    DISK_SIZE,
    DPKG_EXCLUDES,
    FS_LABEL,
    GRUB_DEFAULTS,
    HOSTNAME,
    INITRAMFS_MODULES,
    INITRAMFS_REQUIRED,
    LOGIN_MARKER,
    META_NAME,
    MF_NAME,
    MKE2FS_CONF,
    NETWORKD_DHCP,
    OVA_NAME,
    OVF_NAME,
    PART_START,
    RAW_NAME,
    ROOT_PASSWORD,
    ROOT_USER,
    SECTOR,
    SUITE,
    VIRTIO_CONFIG,
    VIRTIO_MODULES,
    VM_NAME,
    VMDK_NAME,
)


def _chroot(
    run: Runner,
    root: Path,
    script: str,
    *,
    pkgcache: Path | None = None,
    capture: bool = False,
    env_extra: dict | None = None,
) -> str:
    """Run a shell script inside the chroot, in a private mount namespace: the
    /proc, /sys (and apt cache) mounts vanish with the process, even if the
    build is killed, so nothing is ever left mounted inside the tree."""
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "LC_ALL": "C",
        "HOME": "/root",
        "DEBIAN_FRONTEND": "noninteractive",
        "DEBCONF_NONINTERACTIVE_SEEN": "true",
        "R": str(root),
        "SCRIPT": script,
        "PKGCACHE": str(pkgcache or ""),
    }
    for k in ("http_proxy", "https_proxy", "no_proxy"):
        if k in os.environ:
            env[k] = os.environ[k]
    env.update(env_extra or {})
    outer = (
        'mount -t proc proc "$R/proc" && mount -t sysfs sysfs "$R/sys" && '
        '{ [ -z "$PKGCACHE" ] || mount --bind "$PKGCACHE" "$R/var/cache/apt/archives"; } && '
        'exec chroot "$R" /bin/sh -ec "$SCRIPT"'
    )
    return run([*UNSHARE, "sh", "-ec", outer], env=env, capture=capture)


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    """Write a file inside the chroot.  An existing symlink is replaced, never
    followed (it could point outside the tree, e.g. /etc/resolv.conf)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.write_text(text)
    path.chmod(mode)


def build(work: Path, key: str, log: Callable[[str], None]) -> None:
    if os.geteuid() != 0:
        raise RuntimeError(
            "building the test guest needs root (debootstrap, chroot); "
            "run as root once, later runs use the cache"
        )
    require_tools(
        [
            "debootstrap",
            "qemu-img",
            "qemu-system-x86_64",
            "guestfish",
            "mkfs.ext4",
            "sfdisk",
            "unshare",
            "chroot",
        ]
    )
    t_start = time.monotonic()
    if work.exists():
        rmtree(work)
    work.mkdir(parents=True)
    run = Runner(work / "build.log")
    root = work / "rootfs"
    digest = bytes.fromhex(key)
    fs_uuid = str(uuid.UUID(bytes=digest[:16], version=4))
    mac = f"00:50:56:{digest[16] & 0x3F:02x}:{digest[17]:02x}:{digest[18]:02x}"
    log(f"building the test guest in {work} (log: {work / 'build.log'})")

    # 1. debootstrap ------------------------------------------------------
    mirror, keyring = detect_mirror()
    log(f"debootstrap {SUITE}/{ARCH} minbase from {mirror} (a few minutes)")
    proxy = apt_proxy()
    env = dict(os.environ, LC_ALL="C")
    if proxy:
        env.setdefault("http_proxy", proxy)
        os.environ.setdefault("http_proxy", proxy)  # for apt in the chroot
    pkgcache = work.parent / ".debs"  # survives builds
    (pkgcache / "partial").mkdir(parents=True, exist_ok=True)
    cmd = [
        *UNSHARE,
        "debootstrap",
        "--variant=minbase",
        f"--arch={ARCH}",
        "--components=main",
        f"--include={','.join(DEBOOTSTRAP_INCLUDE)}",
        f"--cache-dir={pkgcache}",
    ]
    if keyring:
        cmd.append(f"--keyring={keyring}")
    run([*cmd, SUITE, str(root), mirror], env=env)

    # 2. configuration that must exist before the kernel is installed --------
    log("configuring dpkg excludes, initramfs-tools (no virtio), GRUB defaults")
    _write(root / "etc/dpkg/dpkg.cfg.d/01-ferry-small", DPKG_EXCLUDES)
    _write(root / "usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n", 0o755)
    _write(
        root / "etc/initramfs-tools/conf.d/ferry-vmware-like.conf",
        "# Ferry test guest: like a VMware guest built with MODULES=dep, only the\n"
        "# drivers listed in /etc/initramfs-tools/modules, and NO virtio drivers.\n"
        "# (MODULES=dep itself cannot be used in a chroot: it would probe the\n"
        "# build machine's root disk.)\nMODULES=list\nCOMPRESS=gzip\n",
    )
    with open(root / "etc/initramfs-tools/modules", "a") as f:
        f.write(
            "# Ferry test guest: VMware SCSI, IDE/SATA, disk and root fs.\n"
            "# No virtio: a converter (virt-v2v) appends those.\n"
        )
        f.write("".join(m + "\n" for m in INITRAMFS_MODULES))
    _write(root / "etc/default/grub.d/ferry.cfg", GRUB_DEFAULTS)
    if os.path.exists("/etc/resolv.conf"):  # name resolution for apt
        _write(root / "etc/resolv.conf", Path("/etc/resolv.conf").read_text())

    # 3. kernel + GRUB -----------------------------------------------------
    log(f"installing {' '.join(APT_INSTALL)} in the chroot")
    _chroot(
        run,
        root,
        f"""
        # what debootstrap unpacked before the dpkg excludes existed
        find /usr/share/doc -depth -type f ! -name copyright -delete || true
        find /usr/share/doc -depth -mindepth 1 -type d -empty -delete || true
        rm -rf /usr/share/man/* /usr/share/info/* /usr/share/lintian/* || true
        find /usr/share/locale -mindepth 1 -maxdepth 1 ! -name locale.alias \
            -exec rm -rf {{}} + || true
        printf '%s\\n' 'grub-pc grub-pc/install_devices multiselect' \
            'grub-pc grub-pc/install_devices_empty boolean true' | debconf-set-selections
        apt-get update
        apt-get install -y --no-install-recommends {" ".join(APT_INSTALL)}
        """,
        pkgcache=pkgcache,
    )
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise RuntimeError(f"expected one kernel in the guest, found {kernels}")
    kver = kernels[0].name[len("vmlinuz-") :]
    log(f"guest kernel {kver}")

    # 4. system configuration ---------------------------------------------
    log("configuring hostname, fstab, root password, serial getty, network")
    _write(root / "etc/hostname", HOSTNAME + "\n")
    _write(
        root / "etc/hosts",
        f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    )
    _write(
        root / "etc/fstab",
        "# <file system> <mount point> <type> <options> <dump> <pass>\n"
        f"UUID={fs_uuid}\t/\text4\terrors=remount-ro\t0\t1\n",
    )
    _write(root / "etc/systemd/network/20-ferry-dhcp.network", NETWORKD_DHCP)
    _write(root / "etc/resolv.conf", "")
    _write(root / "etc/machine-id", "")  # generated on first boot
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    _chroot(
        run,
        root,
        f"""
        echo '{ROOT_USER}:{ROOT_PASSWORD}' | chpasswd
        systemctl enable serial-getty@ttyS0.service systemd-networkd.service
        if [ -e /lib/systemd/system/systemd-firstboot.service ]; then
            systemctl mask systemd-firstboot.service; fi
        rm -f /usr/sbin/policy-rc.d
        rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt/* \
               /var/cache/apt/archives/*.deb \
               /var/cache/debconf/*-old /var/lib/dpkg/*-old /root/.bash_history
        find /var/log -type f -exec truncate -s 0 {{}} +
        """,
    )

    # 5. checks on the initramfs and the kernel ----------------------------
    log("checking the initramfs: lsinitramfs must list no virtio module")
    listing = _chroot(run, root, f"lsinitramfs /boot/initrd.img-{kver}", capture=True)
    in_initrd = sorted(
        {Path(p).name.split(".ko")[0] for p in listing.split() if ".ko" in Path(p).name}
    )
    virtio_in_initrd = [m for m in in_initrd if "virtio" in m]
    if virtio_in_initrd:
        raise RuntimeError(f"virtio modules in the initramfs: {virtio_in_initrd}")
    missing = [m for m in INITRAMFS_REQUIRED if m not in in_initrd]
    if missing:
        raise RuntimeError(f"initramfs lacks required modules {missing}")
    moddir = root / "lib/modules" / kver
    virtio_on_disk = {
        m: [str(p.relative_to(moddir)) for p in moddir.rglob(m + ".ko*")] for m in VIRTIO_MODULES
    }
    kconfig = {}
    for line in (root / f"boot/config-{kver}").read_text().splitlines():
        m = re.match(r"^CONFIG_(\w+)=(.*)$", line)
        if m and m.group(1) in VIRTIO_CONFIG:
            kconfig[m.group(1)] = m.group(2)
    builtin = sorted(k for k, v in kconfig.items() if v == "y")
    log(f"kernel config: {' '.join(f'{k}={v}' for k, v in sorted(kconfig.items()))}")
    for m, where in virtio_on_disk.items():
        if (
            not where
            and kconfig.get(
                {
                    "virtio_blk": "VIRTIO_BLK",
                    "virtio_pci": "VIRTIO_PCI",
                    "virtio_scsi": "SCSI_VIRTIO",
                    "virtio_net": "VIRTIO_NET",
                }[m]
            )
            != "y"
        ):
            raise RuntimeError(f"{m} is neither a module in /lib/modules nor built in")
    if builtin:
        log(f"WARNING: built into the kernel (cannot be kept out of boot): {builtin}")
    os_release = dict(
        re.findall(r'^(\w+)="?([^"\n]*)"?$', (root / "usr/lib/os-release").read_text(), re.M)
    )
    os_name = os_release.get("PRETTY_NAME", "Debian")
    shutil.copyfile(root / f"boot/vmlinuz-{kver}", work / f"vmlinuz-{kver}")
    shutil.copyfile(root / f"boot/initrd.img-{kver}", work / f"initrd.img-{kver}")
    rootfs_bytes = int(run(["du", "-sxb", str(root)], capture=True).split()[0])

    # 6. disk image: ext4 written straight into the partition, no loop device --
    log("creating the 2 GiB disk: ext4 (mkfs.ext4 -d) at 1 MiB, MBR partition table")
    raw = work / RAW_NAME
    with open(raw, "wb") as f:
        f.truncate(DISK_SIZE)
    conf = work / "mke2fs.conf"
    conf.write_text(MKE2FS_CONF)
    fs_blocks = (DISK_SIZE - PART_START) // 4096
    run(
        [
            "mkfs.ext4",
            "-F",
            "-q",
            "-t",
            "ext4",
            "-L",
            FS_LABEL,
            "-U",
            fs_uuid,
            "-b",
            "4096",
            "-E",
            f"offset={PART_START},nodiscard,root_owner=0:0",
            "-d",
            str(root),
            str(raw),
            str(fs_blocks),
        ],
        env=dict(os.environ, MKE2FS_CONFIG=str(conf)),
    )
    run(
        [
            "sfdisk",
            "--no-reread",
            "--no-tell-kernel",
            "--wipe",
            "never",
            "--wipe-partitions",
            "never",
            str(raw),
        ],
        input=(
            f"label: dos\nlabel-id: 0x{digest[20:24].hex()}\nunit: sectors\n\n"
            f"start={PART_START // SECTOR}, size={(DISK_SIZE - PART_START) // SECTOR}, "
            "type=83, bootable\n"
        ),
    )
    rmtree(root)  # ~0.5 GB, no longer needed

    # 7. bootloader: GRUB, installed from inside the guest via libguestfs ------
    # GRUB (not extlinux) because virt-v2v only converts guests whose bootloader
    # is GRUB ("no bootloader detected" otherwise).  libguestfs gives us a real
    # /dev/sda with /dev/sda1, so grub-install and update-grub behave exactly as
    # in an installed system, with no loop devices or partition scanning needed.
    log("installing GRUB with guestfish (grub-install /dev/sda, update-grub)")
    gf_env = libguestfs_env(work / f"vmlinuz-{kver}", log)
    out = run(
        ["guestfish", "--rw", "--format=raw", "-a", str(raw), "-m", "/dev/sda1"],
        env=gf_env,
        capture=True,
        input=(
            'sh "export PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C; '
            "grub-install --target=i386-pc /dev/sda 2>&1 && update-grub 2>&1 && "
            "echo FERRY_GRUB_OK && grep -E '^[[:space:]]*linux[[:space:]]' "
            '/boot/grub/grub.cfg"\n'
            "statvfs /\n"
            "umount-all\n"
            "e2fsck /dev/sda1 correct:true forceall:false\n"
        ),
    )
    if "FERRY_GRUB_OK" not in out:
        raise RuntimeError(f"GRUB installation failed:\n{out}")
    linux_lines = [
        ln.strip()
        for ln in out.split("FERRY_GRUB_OK", 1)[1].splitlines()
        if ln.strip().startswith("linux")
    ]
    if (
        not linux_lines
        or f"root=UUID={fs_uuid}" not in linux_lines[0]
        or "console=ttyS0" not in linux_lines[0]
    ):
        raise RuntimeError(f"unexpected grub.cfg kernel line(s): {linux_lines}")
    sv = dict(re.findall(r"^(\w+): (\d+)$", out, re.M))
    fs_used = (int(sv["blocks"]) - int(sv["bfree"])) * int(sv["bsize"])
    log(f"root file system: {fs_used / 1e6:.0f} MB used; grub: {linux_lines[0]}")

    # 8. VMDK + OVF + manifest -> OVA --------------------------------------
    log("converting to a streamOptimized VMDK")
    vmdk = work / VMDK_NAME
    run(
        [
            "qemu-img",
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized,adapter_type=lsilogic",
            str(raw),
            str(vmdk),
        ]
    )
    info = json.loads(run(["qemu-img", "info", "--output=json", str(vmdk)], capture=True))
    if info.get("format-specific", {}).get("data", {}).get("create-type") != "streamOptimized":
        raise RuntimeError(f"qemu-img did not write a streamOptimized VMDK: {info}")
    run(["qemu-img", "compare", "-f", "raw", "-F", "vmdk", str(raw), str(vmdk)])
    populated = _allocated_bytes(run, raw)
    ovf = work / OVF_NAME
    ovf.write_text(ovf_envelope(vmdk.stat().st_size, populated, mac))
    mf = work / MF_NAME
    mf.write_text("".join(f"SHA256({p.name})= {_sha256(p)}\n" for p in (ovf, vmdk)))
    ova = work / OVA_NAME
    log("writing the OVA (ustar: .ovf, .mf, .vmdk)")
    with tarfile.open(ova, "w", format=tarfile.USTAR_FORMAT) as tar:
        for p in (ovf, mf, vmdk):
            ti = tar.gettarinfo(str(p), arcname=p.name)
            ti.uid = ti.gid = 64
            ti.uname = ti.gname = "someone"
            ti.mode = 0o644
            with open(p, "rb") as f:
                tar.addfile(ti, f)
    vmdk_size = vmdk.stat().st_size
    for p in (vmdk, conf):
        p.unlink()

    # 9. metadata last: its presence marks the entry complete -----------------
    meta = {
        "recipe_hash": key,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": round(time.monotonic() - t_start, 1),
        "vm_name": VM_NAME,
        "hostname": HOSTNAME,
        "root_user": ROOT_USER,
        "root_password": ROOT_PASSWORD,
        "login_marker": LOGIN_MARKER,
        "os_name": os_name,
        "os_release": os_release,
        "kernel_version": kver,
        "kernel": f"vmlinuz-{kver}",
        "initrd": f"initrd.img-{kver}",
        "mirror": mirror,
        "mac_address": mac,
        "root_fs_uuid": fs_uuid,
        "fs_label": FS_LABEL,
        "disk_virtual_size": DISK_SIZE,
        "raw_allocated_bytes": populated,
        "rootfs_bytes": rootfs_bytes,
        "fs_used_bytes": fs_used,
        "vmdk_size": vmdk_size,
        "ova_size": ova.stat().st_size,
        "grub_linux_line": linux_lines[0],
        "initramfs_modules": in_initrd,
        "initramfs_virtio_modules": virtio_in_initrd,
        "virtio_modules_on_disk": virtio_on_disk,
        "kernel_config_virtio": kconfig,
        "virtio_builtin": builtin,
    }
    (work / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    log(
        f"built in {meta['build_seconds']:.0f}s: OVA {meta['ova_size'] / 1e6:.0f} MB, "
        f"raw {populated / 1e6:.0f} MB allocated of {DISK_SIZE / 2**30:.0f} GiB"
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _allocated_bytes(run: Runner, raw: Path) -> int:
    """Bytes of the disk that hold data (what vSphere calls populatedSize)."""
    extents = json.loads(
        run(["qemu-img", "map", "--output=json", "-f", "raw", str(raw)], capture=True)
    )
    return sum(e["length"] for e in extents if e.get("data"))
