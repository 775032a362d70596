"""Chaos: raw-copy migrations under ``ferry up`` while processes are killed with -9.

A fleet of small OVAs (``--vms``, default 20) migrates in raw copy mode through
the real services, supervised as ``ferry up --detach`` runs them, while
``--kills`` (default 100) kill -9s hit random services and the nats-server at
seeded random moments (the schedule is printed, and the same ``--seed`` gives the
same one). Then every VM must have ended Completed exactly once (the publish
ledger counts what the stream's dedupe would hide), each volume must hold the
source disk's bytes, there must be one volume and one VirtualMachine per source
VM, nothing in the dead-letter stream, and, after ``ferry down``, no process of
the stack left. The same fleet first runs without kills, for the wall time the
kills cost (``--no-baseline`` skips it).

Usage: .venv/bin/python bench/chaos/run.py [--vms 20] [--kills 100] [--seed 19]
Exit status 0 only when every check holds and every kill was carried out.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

from ferry.testing import chaos
from ferry.testing.supervised import SupervisedStack

# Restarts as quick as the supervisor allows, and never "left down": the run is about
# what the services lose, not about the supervisor's crash-loop protection.
UP_OPTIONS: tuple[str, ...] = ("--restart-delay", "0.3", "--restart-max-delay", "2")
UP_OPTIONS += ("--min-uptime", "1", "--crash-loop-after", "1000")


def one_run(
    root: Path, args: argparse.Namespace, plan: list[chaos.Kill], label: str
) -> tuple[chaos.Run, chaos.Audit, list[str]]:
    ledger = root / "ledger"
    stack = SupervisedStack(root / "stack", env=chaos.settings(ledger))
    stack.start(120.0, *UP_OPTIONS)
    try:
        fleet = chaos.make_fleet(stack, args.vms, size_mib=args.size_mib, in_flight=args.in_flight)
        print(f"{label}: {args.vms} raw-copy migrations, {len(plan)} kills planned", flush=True)
        done = chaos.migration_done(stack, "m-chaos")
        run = chaos.run(stack, fleet, "m-chaos", plan, done=done, timeout=args.timeout)
        audit = chaos.audit(stack, fleet, "m-chaos", ledger)
        left = chaos.down(stack)
    finally:
        stack.close()
    return run, audit, left


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=20)
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--in-flight", type=int, default=2)
    parser.add_argument("--gap", type=float, nargs=2, default=(0.3, 1.5), metavar=("MIN", "MAX"))
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args()

    plan = chaos.schedule(args.seed, args.kills, tuple(args.gap))
    print(f"schedule (seed {args.seed}): gap before each kill, then its target")
    for n, kill in enumerate(plan, 1):
        print(f"  {n:3d}. +{kill.after:4.2f}s {kill.target}")
    with tempfile.TemporaryDirectory(prefix="ferry-chaos-") as tmp:
        base = None
        if not args.no_baseline:
            base = one_run(Path(tmp) / "baseline", args, [], "baseline")
        run, audit, left = one_run(Path(tmp) / "chaos", args, plan, "chaos")
    by_target = collections.Counter(target for _, target, _ in run.kills)
    figures = {
        "migrations": args.vms,
        "kills": f"{len(run.kills)} of {args.kills} ({dict(sorted(by_target.items()))})",
        "completed": f"{audit.completed} of {args.vms}",
        "lost": len(audit.lost),
        "duplicated": len(audit.duplicated),
        "checksum mismatches": len(audit.checksum_mismatch),
        "volumes / VMs": f"{audit.volumes} / {audit.vms_on_disk}",
        "dead letters": audit.dead_letters,
        "orphan processes": len(left),
        "wall time, kills": f"{run.seconds:.1f}s",
    }
    if base is not None:
        base_run, base_audit, base_left = base
        figures["wall time, no kills"] = f"{base_run.seconds:.1f}s"
        figures["cost of the kills"] = f"x{run.seconds / max(base_run.seconds, 0.1):.2f}"
        if not base_audit.clean or base_left:
            figures["baseline problems"] = [*base_audit.problems, *base_left]
    print("chaos report")
    print(chaos.summary(**figures))
    for problem in [*audit.problems, *left]:
        print(f"  PROBLEM: {problem}")
    ok = audit.clean and not left and len(run.kills) == args.kills
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
