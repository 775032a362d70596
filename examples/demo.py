"""``make demo``: migrate the test guest's OVA into the local platform and boot it.

What a user would type, in order, with the real ``ferry`` command: ``ferry up
--detach`` in a private data dir, ``ferry apply`` of the objects in this folder,
``ferry estimate demo`` (per-VM duration and downtime with their inputs),
``ferry migrate demo --wait`` (live progress), then ``ferry describe migration``.
Afterwards it shows what the migration produced: the disk checksums, the
KubeVirt VirtualMachine manifest, and the tail of the migrated guest's serial
console with its login prompt (the vm-service reported Running on seeing it).

Each run starts from a clean data dir (a previous demo's stack is stopped
first), because a Plan migrates each VM once: a second Migration of the same
Plan would have nothing left to do.

Usage: ``python examples/demo.py [--data-dir DIR] [--down]`` (``DEMO_DOWN=1`` = ``--down``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PLAN = "demo"
OBJECTS = ("provider.yaml", "maps.yaml", "plan.yaml")
PLACEHOLDER_URL = "/var/lib/ferry/ova"


def say(text: str) -> None:
    print(f"\n\033[1;36m==> {text}\033[0m", flush=True)


def ferry_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "ferry.cli.main", *args]


def ferry(*args: str, check: bool = True) -> int:
    """Run ``ferry ARGS`` with its output on this terminal, as the user would see it."""
    print(f"$ ferry {' '.join(args)}", flush=True)
    code = subprocess.call(ferry_argv(*args))
    if check and code != 0:
        raise SystemExit(f"demo: `ferry {' '.join(args)}` exited with {code}")
    return code


def ferry_json(*args: str) -> list[dict[str, Any]]:
    out = subprocess.run(ferry_argv(*args), capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


# -- the source ------------------------------------------------------------------------


def test_guest() -> dict[str, Any]:
    """Build (or reuse from the cache) the Debian test guest OVA; its paths as JSON."""
    say("Test guest OVA (built once, then reused from ~/.cache/ferry/test-guest)")
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests/guest/build_guest.py")],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    guest: dict[str, Any] = json.loads(done.stdout)
    print(f"{guest['ova']}  ({time.monotonic() - started:.0f}s)")
    return guest


def place_ova(ova: Path, ova_dir: Path) -> Path:
    """A copy: the OVA provider refuses symlinks and hard links into its directory."""
    ova_dir.mkdir(parents=True, exist_ok=True)
    target = ova_dir / ova.name
    target.unlink(missing_ok=True)
    shutil.copy2(ova, target)
    return target


def manifest_digest(ova: Path, disk_file: str) -> tuple[str, str]:
    """(algorithm, digest) of ``disk_file`` in the OVA's manifest (.mf)."""
    with tarfile.open(ova) as tar:
        for member in tar.getmembers():
            if member.name.endswith(".mf"):
                text = tar.extractfile(member).read().decode()  # type: ignore[union-attr]
                for line in text.splitlines():
                    found = re.match(r"(\w+)\((.+)\)\s*=\s*([0-9a-fA-F]+)", line.strip())
                    if found and found[2] == disk_file:
                        return found[1], found[3].lower()
    return "", ""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


# -- the steps -------------------------------------------------------------------------


def stop_guests(data_dir: Path) -> None:
    """QEMU guests outlive the services (as VMs outlive virt-handler): stop the demo's own."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if Path(argv[0].decode(errors="replace")).name.startswith("qemu-system") and (
            str(data_dir).encode() in b" ".join(argv)
        ):
            print(f"stopping guest QEMU pid {entry.name}")
            os.kill(int(entry.name), signal.SIGTERM)


def fresh_stack(data_dir: Path) -> None:
    if (data_dir / "stack.json").exists():
        say(f"Stopping the previous demo's stack in {data_dir}")
        ferry("down", "--data-dir", str(data_dir), check=False)
    stop_guests(data_dir)
    if data_dir.exists():
        shutil.rmtree(data_dir)
    say("Starting the stack: nats-server (JetStream) and the four services")
    ferry("up", "--detach", "--data-dir", str(data_dir))


def apply_objects(data_dir: Path, ova_dir: Path) -> None:
    say("Applying the demo's objects (examples/*.yaml): Providers, NetworkMap, StorageMap, Plan")
    generated = data_dir / "demo"
    generated.mkdir(parents=True, exist_ok=True)
    files = []
    for name in OBJECTS:
        text = (HERE / name).read_text()
        if name == "provider.yaml":
            text = text.replace(f"url: {PLACEHOLDER_URL}", f"url: {ova_dir}")
        (generated / name).write_text(text)
        files += ["-f", str(generated / name)]
    print(f"(provider url → {ova_dir})")
    ferry("apply", *files)
    ferry("inventory", "ova-source")


def show_results(data_dir: Path, migration: str, guest: dict[str, Any], ova: Path) -> None:
    events = ferry_json("events", "--migration", migration, "-o", "json")
    data = [e["data"] for e in events]

    say(f"The VM's pipeline: ferry describe migration {migration}")
    ferry("describe", "migration", migration, check=False)

    say("Disk checksums")
    listed = subprocess.run(
        ferry_argv("inventory", "ova-source", "-o", "json"),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # `ferry inventory -o json` lists packages, each with its verdict and its VMs.
    disks = [d for package in json.loads(listed) for vm in package["vms"] for d in vm["disks"]]
    converted = next((d for d in data if d["type"] == "conversion.guest_converted.v1"), None)
    volumes = {v["disk_id"]: v for v in (converted or {}).get("volumes", [])}
    for disk in disks:
        algorithm, digest = manifest_digest(ova, disk["name"])
        print(f"disk {disk['id']} ({disk['name']}, {disk['capacity']} bytes)")
        print(f"  source  {algorithm or 'sha?'}:{digest or '(no manifest entry)'}")
        print("          the OVA manifest's digest of the VMDK, verified by the OVA provider")
        volume = volumes.get(disk["id"])
        if volume and volume.get("path"):
            print(f"  target  SHA256:{sha256_of(Path(volume['path']))}")
            print(f"          of the raw volume virt-v2v wrote: {volume['path']}")
    print(
        "These differ by design: in this flow (OVA, cold, local) virt-v2v converts the guest\n"
        "(virtio drivers into the initramfs, new boot config) while it writes the target\n"
        "volumes, and the source is a compressed VMDK while the target is a raw disk.\n"
        "Flows that copy disks unchanged (CopyDisks) verify source = target checksums."
    )

    say("The KubeVirt VirtualMachine")
    created = next((d for d in data if d["type"] == "vm.vm_created.v1"), None)
    if created:
        print(f"manifest: {created['manifest']}")
        print(Path(created["manifest"]).read_text()[:1500])

    say("The migrated guest under QEMU (serial console, last lines)")
    running = next((d for d in data if d["type"] == "vm.vm_running.v1"), None)
    if running is None:
        print("the vm-service has not reported the guest Running")
        return
    console = Path(running["console"])
    lines = console.read_text(errors="replace").splitlines()
    marker = guest["login_marker"]
    at = max((i for i, line in enumerate(lines) if marker in line), default=len(lines) - 1)
    for line in lines[max(0, at - 12) : at + 3]:
        print(f"  | {line}")
    print(
        f"vm-service saw {marker!r} after {running['boot_seconds']}s and reported Running; "
        f"console: {console}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path(".ferry/demo"))
    parser.add_argument("--down", action="store_true", default=os.environ.get("DEMO_DOWN") == "1")
    args = parser.parse_args(argv)
    data_dir = args.data_dir.expanduser().resolve()
    os.environ["FERRY_DATA_DIR"] = str(data_dir)  # the CLI finds the stack's NATS through it
    os.environ.setdefault("COLUMNS", "160")

    started = time.monotonic()
    guest = test_guest()
    fresh_stack(data_dir)
    ova = place_ova(Path(guest["ova"]), data_dir / "ova")
    apply_objects(data_dir, ova.parent)
    say(f"Before it runs, how long and how much downtime: ferry estimate {PLAN}")
    ferry("estimate", PLAN)

    migration = f"{PLAN}-{time.strftime('%Y%m%d-%H%M%S')}"
    say(f"Migrating: ferry migrate {PLAN} --wait (virt-v2v takes minutes without KVM)")
    code = ferry("migrate", PLAN, "--wait", "--name", migration, check=False)
    show_results(data_dir, migration, guest, ova)

    say(f"Done in {time.monotonic() - started:.0f}s: migration {migration} exited {code}")
    if args.down:
        ferry("down", "--data-dir", str(data_dir), check=False)
        stop_guests(data_dir)
    else:
        print(
            f"The stack is still up (data dir {data_dir}). Look around:\n"
            f"  export FERRY_DATA_DIR={data_dir}\n"
            f"  .venv/bin/ferry events --migration {migration}     # the audit stream\n"
            f"  .venv/bin/ferry describe migration {migration}\n"
            f"  .venv/bin/ferry get plans; .venv/bin/ferry get migrations\n"
            f"  ls {data_dir}/logs  {data_dir}/vms\n"
            f"Stop it with: .venv/bin/ferry down --data-dir {data_dir}\n"
            f"The guest's QEMU keeps running (a VM outlives its controller); stop it with:\n"
            f"  kill $(cat {data_dir}/vms/*/*/qemu.pid)"
        )
    return code


if __name__ == "__main__":
    raise SystemExit(main())
