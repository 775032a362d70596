"""The repository is self-contained: the README links only inside it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_readme_links_stay_inside_the_repository() -> None:
    # Given every relative link of the README and the docs
    for doc in (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))):
        for target in LINK.findall(doc.read_text()):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue  # an absolute URL or an anchor is not a file of ours
            path = (doc.parent / target.split("#", 1)[0]).resolve()
            # Then it names a file that exists in this checkout
            assert path.is_relative_to(ROOT), f"{doc.name} links outside the repository: {target}"
            assert path.exists(), f"{doc.name} links to a missing file: {target}"
