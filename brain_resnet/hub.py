"""Hub-ready model folders, the release's float16 shards, and uploading a run's model with its card."""

import copy
from pathlib import Path

import torch

from .cli import UsageError
from .reports import render_model_card
from .runs import FULL, fold_name, read_json, write_json

# The release folder is committed to git and copied off training machines that take files up to 16 MiB.
RELEASE_SHARD_SIZE = "15MB"


def save_model_folder(model, processor, folder: Path, half_storage: bool) -> None:
    """A Hub-ready folder. The release (full) model stores float16 weights, half the size (the Space and the Hub
    repo hold it), in shards of at most RELEASE_SHARD_SIZE, while config.json keeps dtype float32, so that
    from_pretrained's default dtype="auto" loads a float32 model that runs on any CPU."""
    if half_storage:
        copy.deepcopy(model).to(device="cpu", dtype=torch.float16).save_pretrained(
            folder, max_shard_size=RELEASE_SHARD_SIZE
        )
        config_path = folder / "config.json"
        write_json(config_path, read_json(config_path) | {"dtype": "float32"})
    else:
        model.save_pretrained(folder)
    processor.save_pretrained(folder)


def push_to_hub(folder: Path, repo_id: str) -> None:
    """Create the model repo if needed and upload the folder (the one write to the Hub; reading a Hub dataset or
    model id is the other use of the network)."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, exist_ok=True)
    api.upload_folder(folder_path=folder, repo_id=repo_id, commit_message="Upload the model and its card")


def upload(folder: Path, repo_id: str, retry: str) -> None:
    """push_to_hub with progress lines; a failure (network, authentication) becomes a UsageError that says the
    folder is complete and how to `retry`."""
    print(f"Uploading {folder} to https://huggingface.co/{repo_id} ...")
    try:
        push_to_hub(folder, repo_id)
    except Exception as error:
        message = f"upload to {repo_id} failed ({type(error).__name__}: {error}); {folder} is complete: {retry}"
        raise UsageError(message) from None
    print(f"Uploaded https://huggingface.co/{repo_id}")


def publish(out: Path, results: dict, repo_id: str, template: str) -> None:
    """Upload the release model (else the first fold's) with its card (from `template`) naming the repo."""
    folds = sorted(int(key) for key in results.get("folds", {}))
    fold = FULL if FULL in results else folds[0] if folds else None
    if fold is None:
        raise UsageError(f"{out} has no finished model to push")
    folder = out / fold_name(fold)
    card = render_model_card(template, results, fold if fold == FULL else str(fold), repo_id)
    (folder / "README.md").write_text(card)
    upload(folder, repo_id, "rerun with --resume --push-to-hub, or `hf upload`")
