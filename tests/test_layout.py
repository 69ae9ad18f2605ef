"""The README's Layout section names every tracked top-level entry and every brain_resnet module, and nothing else."""

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
UNLISTED = {"README.md", ".gitignore"}  # the map itself, and git's own file


def layout_entries() -> list[tuple[int, str]]:
    """(indent, name) of each entry of the Layout section's map; continuation lines of a description are skipped."""
    section = (REPO / "README.md").read_text().split("## Layout\n", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```text\n(.*?)```", section, flags=re.S)
    entries = [re.match(r"( *)(\S+)", line) for line in block.splitlines() if line.strip() and line[:22].strip()]
    return [(len(entry[1]), entry[2]) for entry in entries]


def test_readme_layout_matches_the_tree():
    entries = layout_entries()
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    top_level = {path.split("/")[0] for path in tracked.splitlines()} - UNLISTED
    assert {name.rstrip("/") for indent, name in entries if indent == 0} == top_level
    modules = {path.name for path in (REPO / "brain_resnet").iterdir() if path.name != "__init__.py"}
    assert {name for indent, name in entries if indent == 2} == modules - {"__pycache__"}
