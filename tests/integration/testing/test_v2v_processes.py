"""The harness finds a stack's virt-v2v runs by the document they read, not by luck.

virt-v2v is handed ``-i libvirtxml FILE`` in a private work directory, so its command
line names neither the stack nor the source; a "no virt-v2v of this stack is left"
check that looked only at the command line could never fail.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ferry.testing.stack import v2v_processes


def test_a_run_is_found_by_the_disks_its_document_names(tmp_path: Path) -> None:
    # Given a process that runs as virt-v2v, reading a document naming a disk of a stack
    document = tmp_path / "work" / "source.xml"
    document.parent.mkdir()
    document.write_text("<domain><disk><source file='/stacks/one/ova/guest-a.ova'/></disk>")
    run = subprocess.Popen(
        ["bash", "-c", 'exec -a "$0" "$@"', str(tmp_path / "virt-v2v"), sys.executable,
         "-c", "import time; time.sleep(60)", "-i", "libvirtxml", str(document)],
    )  # fmt: skip
    try:
        # When the harness looks for the runs of that stack, and of another one
        found = _eventually(lambda: v2v_processes("/stacks/one"))
        # Then it finds this one by its document, and none for the other stack
        assert [pid for pid, _ in found] == [run.pid]
        assert v2v_processes("guest-a.ova") == found
        assert v2v_processes("/stacks/two") == []
    finally:
        run.kill()
        run.wait()
    assert v2v_processes("/stacks/one") == []


def _eventually(look):  # type: ignore[no-untyped-def]
    import time

    for _ in range(100):
        if found := look():
            return found
        time.sleep(0.05)
    return look()


def test_a_run_is_found_by_the_volumes_its_output_links_name(tmp_path: Path) -> None:
    # Given a virt-v2v reading private copies (no stack path in its document), whose
    # -os directory links its output to a volume of a stack
    work = tmp_path / "ferry-v2v-x"
    (work / "out").mkdir(parents=True)
    document = work / "source.xml"
    document.write_text(f"<domain><disk><source file='{work}/disks/disk1.vmdk'/></disk>")
    (work / "out" / "guest-sda").symlink_to("/stacks/one/data/volumes/e2e/guest-a-disk1.img")
    run = subprocess.Popen(
        ["bash", "-c", 'exec -a "$0" "$@"', str(tmp_path / "virt-v2v"), sys.executable,
         "-c", "import time; time.sleep(60)", "-i", "libvirtxml", str(document),
         "-o", "local", "-os", str(work / "out"), "-on", "guest"],
    )  # fmt: skip
    try:
        # When the harness looks for the runs of that stack and VM, and of others
        found = _eventually(lambda: v2v_processes("/stacks/one"))
        # Then it finds this one by where it writes
        assert [pid for pid, _ in found] == [run.pid]
        assert v2v_processes("/volumes/e2e/guest-a-") == found
        assert v2v_processes("/stacks/two") == []
    finally:
        run.kill()
        run.wait()
