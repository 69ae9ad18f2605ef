"""A train.py output folder: its JSON files, the per-epoch log, the fold folders and the check before resuming."""

import argparse
import contextlib
import json
import os
import threading
from collections import defaultdict
from pathlib import Path

from .cli import UsageError
from .folds import read_exclusions

FULL = "full"  # the fold name of the model trained on all the data
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")  # one file, or shards and their index
LIST_OPTIONS = ("untyped_tumors", "exclude")  # settings that name a list of the dataset's files
# train.py's ways to stop a slice's source telling its class (its "against the source shortcut" options)
SHORTCUT_SETTINGS = (
    "geometry_only",
    "jitter_scale",
    "mix_styles",
    "remap_prob",
    "invert_prob",
    "gin_prob",
    "shuffle_prob",
    "mirror_prob",
    "paste_prob",
    "dark_lesion_prob",
    "heal_prob",
    "heal_from",
    "balance_sources",
    "match_sources",
    "group_dro",
)
# The settings that define what a run computes: --resume continues a run only when they are unchanged.
RUN_SETTINGS = (
    "dataset",
    "protocol",
    "sources",
    "model",
    "init_from",
    "epochs",
    "batch_size",
    "image_size",
    "lr",
    "weight_decay",
    "warmup",
    "label_smoothing",
    *SHORTCUT_SETTINGS,
    "ema_decay",
    *LIST_OPTIONS,
    "seed",
    "mixed_precision",
)


def fold_name(fold) -> str:
    return FULL if fold == FULL else f"fold-{fold}"


def shown_path(path: str) -> str:
    """A dataset path as reports and cards show it: relative to the working directory when inside it (train.py
    stores it resolved), so that they name no machine's folders."""
    try:
        return Path(path).relative_to(Path.cwd()).as_posix()
    except ValueError:  # elsewhere, or a Hub id
        return path


def read_json(path: Path, default=None):
    return json.loads(path.read_text()) if path.exists() else default


def write_json(path: Path, data) -> None:
    """Write through a temporary file, so that an interruption leaves the old file or the new one; the file is the
    writer's own, so that processes started side by side (one per fold) can write the same path at once."""
    partial = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.partial")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(partial, path)


def append_jsonl(path: Path, record: dict) -> None:
    with path.open("a") as log:
        log.write(json.dumps(record) + "\n")


def epoch_records(log_path: Path) -> dict:
    """log.jsonl as {fold: {epoch: record}}; an epoch redone after an interruption keeps its last record."""
    records = defaultdict(dict)
    if log_path.exists():
        for line in log_path.read_text().splitlines():
            record = json.loads(line)
            records[record["fold"]][record["epoch"]] = record
    return records


def run_settings(args: argparse.Namespace) -> dict:
    settings = {name: getattr(args, name) for name in RUN_SETTINGS}
    for name in ("dataset", "model", "init_from", "heal_from", *LIST_OPTIONS):  # the same file however spelled
        if settings[name] is not None and Path(settings[name]).exists():
            settings[name] = str(Path(settings[name]).resolve())
    for name in LIST_OPTIONS:  # what a list named when the run trained: lists get edited
        if settings[name] is not None and Path(settings[name]).exists():
            with contextlib.suppress(OSError, UnicodeDecodeError):  # unreadable: loading the dataset says so
                settings[f"{name}_files"] = sorted(read_exclusions(Path(settings[name])))
    return settings


def check_lists_unchanged(settings: dict) -> None:
    """Refuse to work on a run whose --exclude or --untyped-tumors list now names other files than it trained with
    (runs saved before the lists' contents were recorded pass)."""
    for name in LIST_OPTIONS:
        recorded, path = settings.get(f"{name}_files"), settings.get(name)
        if recorded is None or path is None:
            continue
        option = "--" + name.replace("_", "-")
        try:
            now = sorted(read_exclusions(Path(path)))
        except (OSError, UnicodeDecodeError) as error:
            raise UsageError(f"cannot read the run's {option} list {path}: {error}") from None
        if now != recorded:
            added, dropped = sorted(set(now) - set(recorded)), sorted(set(recorded) - set(now))
            raise UsageError(
                f"the run's {option} list {path} has changed since it trained ({len(added)} file(s) added, "
                f"{len(dropped)} dropped: {', '.join((added + dropped)[:3])}); restore it, or train again"
            )


def changed_settings(saved: dict, current: dict) -> list[str]:
    """The names of the settings `current` has otherwise than `saved` (run_args.json's "settings"). A setting added
    after `saved` was written is off in it: it matches when it is off now. A list's recorded contents are compared
    where the run recorded them."""
    recorded_later = {f"{name}_files" for name in LIST_OPTIONS}
    return [
        name
        for name, value in current.items()
        if saved.get(name) != value and (name in saved or (value and name not in recorded_later))
    ]


def check_resume(args: argparse.Namespace) -> dict | None:
    """The saved settings of the run in --output-dir, once sure that this command may continue it."""
    if args.output_dir.exists() and not args.output_dir.is_dir():
        raise UsageError(f"--output-dir {args.output_dir} is a file: give a folder for the run")
    path = args.output_dir / "run_args.json"
    if not path.exists():
        return None
    if not args.resume:
        raise UsageError(
            f"{args.output_dir} already holds a run: add --resume to continue it, or pick a new --output-dir"
        )
    saved = read_json(path)
    current = run_settings(args)
    changed = [
        f"--{name.replace('_', '-')} {saved['settings'].get(name)} (now {current[name]})"
        for name in changed_settings(saved["settings"], current)
    ]
    if changed:
        raise UsageError(f"--resume continues a run with its own settings; it was run with {', '.join(changed)}")
    return saved


def is_finished(out: Path, results: dict, fold) -> bool:
    """A fold is finished once its model folder is saved and cv_results.json records it."""
    entry = results.get(FULL) if fold == FULL else results.get("folds", {}).get(str(fold))
    return entry is not None and has_weights(out / fold_name(fold))


def has_weights(folder: Path) -> bool:
    return any((folder / name).exists() for name in WEIGHT_FILES)
