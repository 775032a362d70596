"""The message table in docs/ARCHITECTURE.md is generated from proto/ and cannot drift."""

from __future__ import annotations

from pathlib import Path

import pytest

from ferry.proto import catalog, docgen, registry


def test_every_message_has_a_route() -> None:
    # Given every registered message type, Then the catalog describes each one
    assert catalog.missing() == []
    assert set(catalog.BY_TYPE) == {m.type_name() for m in registry.MESSAGES}


def test_checked_in_table_matches_proto() -> None:
    # Given the repository's docs/ARCHITECTURE.md, When checked, Then it has not drifted
    assert docgen.main(["--check", str(docgen.DEFAULT_DOC)]) == 0


def test_check_fails_on_a_stale_table(tmp_path: Path) -> None:
    # Given a copy of the document whose table lost a row
    doc = tmp_path / "ARCHITECTURE.md"
    lines = docgen.DEFAULT_DOC.read_text().splitlines(keepends=True)
    stale = [line for line in lines if "`vm.delete_vm.v1`" not in line]
    assert len(stale) == len(lines) - 1
    doc.write_text("".join(stale))
    # When checked, Then the drift is reported and nothing is written
    assert docgen.main(["--check", str(doc)]) == 1
    assert doc.read_text() == "".join(stale)
    # And when generated, Then the row is back
    assert docgen.main([str(doc)]) == 0
    assert doc.read_text() == docgen.DEFAULT_DOC.read_text()


def test_document_without_markers_is_an_error(tmp_path: Path) -> None:
    doc = tmp_path / "ARCHITECTURE.md"
    doc.write_text("# nothing to fill in\n")
    assert docgen.main(["--check", str(doc)]) == 1
    with pytest.raises(docgen.DocError, match="markers"):
        docgen.render(doc.read_text())


def test_a_message_without_a_route_breaks_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a message the catalog does not describe
    gone = registry.MESSAGES[0].type_name()
    monkeypatch.delitem(catalog.BY_TYPE, gone)
    # When the table is rendered, Then the gap is named
    with pytest.raises(docgen.DocError, match=gone):
        docgen.table()
