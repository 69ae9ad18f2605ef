"""What sartaj_errors.py and sartaj_by_folder.py share: the sixth lease's held-out logits (held_out_logits.py) with
the dataset they were written for, and each slice's call by the fold model that did not train on it."""

import json
import sys
from pathlib import Path

import numpy as np
import torch

from brain_resnet.calibration import notumor_offset
from brain_resnet.data import Table, load_table, read_splits


def load(dataset: str, logits_file: str) -> tuple[dict, Table, np.ndarray]:
    """The logits report, the dataset's grouped table (exiting if its folds or labels are not the report's) and
    each row's file name."""
    report = json.loads(Path(logits_file).read_text())
    table = load_table(dataset, "grouped", with_test=False)
    if table.folds.tolist() != report["folds"] or table.labels.tolist() != report["labels"]:
        sys.exit(f"{dataset} is not the dataset the logits were written for (its folds or labels differ)")
    files = np.array([name.rsplit("/", 1)[-1] for name in read_splits(dataset)[0]["train"]["file"]])
    return report, table, files


def calls_at_operating_point(report: dict, table: Table, run: str, false_alarms: float = 0.05) -> np.ndarray:
    """Each row's class by `run`'s fold model that held it out, mirror-averaged, at an operating point fitted on the
    whole held-out fold so that `false_alarms` of its healthy slices are called a tumor."""
    notumor = table.class_names.index("notumor")
    calls = np.zeros(len(table.labels), int)
    for fold, logits in report["runs"][run].items():
        rows = np.flatnonzero(table.folds == int(fold))
        mirrored = np.array(report["mirrored_runs"][run][fold])
        averaged = torch.from_numpy((np.array(logits, np.float32) + mirrored) / 2)
        averaged[:, notumor] += notumor_offset(averaged, table.labels[rows], notumor, false_alarms)
        calls[rows] = averaged.argmax(dim=1).numpy()
    return calls
