"""Class folders on disk: which folders and files count. prepare_dataset.py and the external scores read folders
alike: hidden ones (".name") and the "__MACOSX" folder that unzipping a macOS archive leaves are not data."""

from pathlib import Path

NOT_DATA = {"__MACOSX"}


def _ignored(name: str) -> bool:
    return name.startswith(".") or name in NOT_DATA


def visible_dirs(folder: Path) -> list[Path]:
    """The folders directly in `folder` that may hold data, by name."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not _ignored(p.name))


def is_hidden(path: Path, below: Path) -> bool:
    """Whether `path` is, or lies in, a folder or file below `below` that holds no data."""
    return any(_ignored(part) for part in path.relative_to(below).parts)
