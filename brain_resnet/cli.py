"""Command-line helpers shared by the scripts: the one-line error and argparse types."""

import argparse
import math
from pathlib import Path

from .modeling import VARIANTS


class UsageError(Exception):
    """A problem with the command line or the dataset: reported in one line, without a traceback."""


def number(kind, low, high=math.inf, low_inclusive=True):
    """An argparse type: `kind` within [low, high] (or (low, high] when low is exclusive)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
        if not (value >= low if low_inclusive else value > low) or value > high:
            bounds = f"{'at least' if low_inclusive else 'above'} {low}" + (
                f" and at most {high}" if high < math.inf else ""
            )
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be {bounds}")
        return value

    return parse


def model_spec(text: str) -> str:
    if text in VARIANTS or (text.endswith(".json") and Path(text).is_file()):
        return text
    raise argparse.ArgumentTypeError(f"{text!r}: give one of {', '.join(VARIANTS)} or an existing CONFIG.json")


def hub_repo_id(text: str) -> str:
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(text)
    except ValueError as error:  # checked now, not after hours of training
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and the default of each option that has one."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS:  # 0 is shown
            return action.help
        return f"{action.help} (default: {action.default})"
