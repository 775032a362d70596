"""A warm round's delta copy is paced like a full copy: the bandwidth caps apply."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from ferry.platform import durable, errors
from ferry.platform.copy import delta, engine
from ferry.platform.copy.sink import DiskSink, open_sink
from ferry.platform.copy.source import open_source
from ferry.platform.images import ImageRef
from ferry.proto.inventory import DiskFormat, Extent

MiB = 1024 * 1024


def test_a_delta_round_passes_every_byte_through_the_throttle_and_reports_progress(
    tmp_path: Path,
) -> None:
    # Given a source with two changed ranges and a filled target of the same size
    src, dst = tmp_path / "src.raw", tmp_path / "dst.raw"
    src.write_bytes(b"\x01" * (8 * MiB))
    dst.write_bytes(b"\x00" * (8 * MiB))
    changed = [Extent(0, 3 * MiB), Extent(5 * MiB, 2 * MiB)]
    throttled: list[int] = []
    reports: list[engine.Progress] = []
    options = engine.Options(throttle=throttled.append, progress_seconds=0.0)
    # When the round writes only those ranges
    source = open_source(ImageRef(path=str(src)))
    try:
        result = delta.apply(
            source,
            open_sink(str(dst), DiskFormat.RAW, 8 * MiB),
            changed,
            options=options,
            progress=reports.append,
        )
    finally:
        source.close()
    # Then every written byte went through the shared throttle (the bus's rate budget)
    assert sum(throttled) == result.written == 5 * MiB
    # And progress was reported up to the whole round
    assert reports and reports[-1].done == reports[-1].total == 5 * MiB
    # And only the changed ranges were written
    data = dst.read_bytes()
    assert data[: 3 * MiB] == b"\x01" * (3 * MiB) and data[3 * MiB : 5 * MiB] == bytes(2 * MiB)


class _Recording:
    """A sink that records its writes and flushes, in order, with the round's commits."""

    def __init__(self, sink: DiskSink, events: list[tuple[str, int]]) -> None:
        self._sink, self._events = sink, events
        self.format, self.size = sink.format, sink.size

    def writer(self) -> object:
        inner, events = self._sink.writer(), self._events

        class Writer:
            def write(self, offset: int, data: memoryview) -> None:
                inner.write(offset, data)
                events.append(("write", offset))

            def close(self) -> None:
                inner.close()

        return Writer()

    def flush(self) -> None:
        self._sink.flush()
        self._events.append(("flush", 0))

    def __getattr__(self, name: str) -> object:
        return getattr(self._sink, name)


def _round(
    tmp_path: Path,
    key: str,
    events: list[tuple[str, int]] | None = None,
    *,
    state_dir: Path | None = None,
    resume: delta.State | None = None,
    on_commit: Callable[[delta.State], None] | None = None,
) -> delta.Result:
    src, dst = tmp_path / "src.raw", tmp_path / "dst.raw"
    sink: DiskSink = open_sink(str(dst), DiskFormat.RAW, 16 * MiB)
    if events is not None:
        sink = _Recording(sink, events)  # type: ignore[assignment]
    source = open_source(ImageRef(path=str(src)))
    try:
        return delta.apply(
            source,
            sink,
            [Extent(0, 6 * MiB), Extent(10 * MiB, 4 * MiB)],
            options=engine.Options(checkpoint_seconds=0.0),
            state_dir=state_dir or tmp_path / "state",
            key=key,
            resume=resume,
            on_commit=on_commit,
        )
    finally:
        source.close()


def _given_disks(tmp_path: Path) -> None:
    (tmp_path / "src.raw").write_bytes(b"\x02" * (16 * MiB))
    (tmp_path / "dst.raw").write_bytes(bytes(16 * MiB))


def test_the_rounds_progress_is_committed_only_after_the_target_was_flushed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a round that commits its progress after every range
    _given_disks(tmp_path)
    events: list[tuple[str, int]] = []
    real = durable.write_atomic

    def commit(path: Path, data: bytes) -> None:
        if path.name == delta.STATE:
            events.append(("commit", msgspec.json.decode(data)["done"]))
        real(path, data)

    monkeypatch.setattr(durable, "write_atomic", commit)
    # When it runs
    _round(tmp_path, "cp-1", events)
    # Then every commit claims only ranges written before the flush that preceded it
    commits = [i for i, (kind, _) in enumerate(events) if kind == "commit"]
    assert commits
    for at in commits:
        claimed = events[at][1]
        flushed = max((i for i in range(at) if events[i][0] == "flush"), default=0)
        written = [e for e in events[:flushed] if e[0] == "write"]
        assert len(written) >= claimed, events[: at + 1]


RANGES = [(0, 4 * MiB), (4 * MiB, 2 * MiB), (10 * MiB, 4 * MiB)]  # _round's extents


def _two_done(key: str) -> delta.State:
    """The ledger of ``_round`` with its first two ranges durable."""
    chain = delta._START
    for _, n in RANGES[:2]:
        chain = delta._link(chain, hashlib.sha256(b"\x02" * n).digest())
    return delta.State(round=delta._round(key, 16 * MiB, RANGES), done=2, chain=chain.hex())


def test_a_round_resumes_only_its_own_picture(tmp_path: Path) -> None:
    # Given a round of picture cp-1 whose first two ranges are recorded as done
    _given_disks(tmp_path)
    (tmp_path / "state").mkdir()
    state = _two_done("cp-1")
    (tmp_path / "state" / delta.STATE).write_bytes(msgspec.json.encode(state))
    # When a round of another picture (or of none) runs on the same ranges
    other = _round(tmp_path, "cp-2")
    # Then it writes every range, and leaves no progress behind
    assert (other.resumed_at, other.written) == (0, 10 * MiB)
    assert not (tmp_path / "state" / delta.STATE).exists()
    (tmp_path / "state" / delta.STATE).write_bytes(msgspec.json.encode(state))
    assert _round(tmp_path, "").written == 10 * MiB
    # And the round of that picture resumes after the two ranges
    resumed = _round(tmp_path, "cp-1")
    assert (resumed.resumed_at, resumed.written) == (6 * MiB, 4 * MiB)
    assert resumed.source.digest == resumed.target.digest


def test_a_ledger_handed_over_resumes_the_round_where_no_file_is_kept(tmp_path: Path) -> None:
    # Given the ledger a killed pod printed (its first two ranges durable), no file of it
    _given_disks(tmp_path)
    state = _two_done("cp-1")
    # When another picture's round runs with it, then a round of that picture
    other = _round(tmp_path, "cp-2", state_dir=tmp_path / "other", resume=state)
    commits: list[delta.State] = []
    resumed = _round(tmp_path, "cp-1", state_dir=tmp_path / "new", resume=state,
                     on_commit=commits.append)  # fmt: skip
    # Then the round of that picture writes only the rest, and verifies the whole round
    assert (resumed.resumed_at, resumed.written) == (6 * MiB, 4 * MiB)
    assert resumed.source.digest == resumed.target.digest
    assert resumed.source.algorithm == delta.ALGORITHM
    # and each commit it handed on is a ledger of fixed size that counts the whole round
    assert [c.done for c in commits] == [3]
    assert len(msgspec.json.encode(commits[-1])) < 200
    # while another picture's round ignores the ledger and writes every range
    assert (other.resumed_at, other.written) == (0, 10 * MiB)


@pytest.mark.parametrize(
    "broken",
    [
        {"done": 4},  # more ranges than the round has
        {"chain": "zz"},  # not hex
        {"chain": "ab" * 8},  # not a SHA-256
        {"done": 0},
    ],
)
def test_a_ledger_that_does_not_fit_the_round_is_ignored(
    tmp_path: Path, broken: dict[str, object]
) -> None:
    # Given a handed-over ledger of the round, spoiled
    _given_disks(tmp_path)
    state = msgspec.structs.replace(_two_done("cp-1"), **broken)
    # When the round runs with it
    result = _round(tmp_path, "cp-1", resume=state)
    # Then it starts afresh, and the round verifies
    assert (result.resumed_at, result.written) == (0, 10 * MiB)
    assert result.source.digest == result.target.digest


@pytest.mark.parametrize("lie", ["chain", "target"])
def test_a_ledger_that_lies_fails_the_round_instead_of_passing_it(tmp_path: Path, lie: str) -> None:
    # Given a handed-over ledger whose chain is not that of the source's ranges, or
    # whose ranges the target does not hold (the disks as given: the target all zeros)
    _given_disks(tmp_path)
    state = _two_done("cp-1")
    if lie == "chain":
        _round(tmp_path, "cp-2")  # the target holds every range
        state = msgspec.structs.replace(state, chain="ab" * 32)
    # When the round resumes from it
    # Then the target's read-back chain differs from the source's, and the round says so
    with pytest.raises(errors.ChecksumMismatchError):
        _round(tmp_path, "cp-1", resume=state)
