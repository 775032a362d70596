"""Every source reader bounds a read the same way (``base.read_span``)."""

from __future__ import annotations

import pytest

from ferry.providers.base import read_span


def test_a_read_inside_the_disk_is_whole() -> None:
    assert read_span(0, 4096, 8192) == 4096


def test_a_read_across_the_end_is_cut_at_the_end() -> None:
    assert read_span(8000, 4096, 8192) == 192


def test_a_read_at_or_past_the_end_is_empty() -> None:
    assert read_span(8192, 4096, 8192) == 0
    assert read_span(9000, 1, 8192) == 0


@pytest.mark.parametrize(("offset", "length"), [(-1, 10), (0, -1)])
def test_negative_offsets_and_lengths_are_a_callers_bug(offset: int, length: int) -> None:
    with pytest.raises(ValueError, match="negative"):
        read_span(offset, length, 8192)
