"""Turn a trained fold model into the release: calibrated, with its unfamiliar-image detector, scored on slices of
other sources, stored as float16 shards with its model card.

    python make_release.py runs/cpu-release-clean/fold-0 --output release --healthy-false-alarms 0.05 \\
        --report results/release.json --push-to-hub you/brain-resnet

MODEL is a fold folder of a train.py run (its parent holds run_args.json and cv_results.json). The fold it was held
out from is the only data it never trained on, and the release is fitted on it:

- the calibration temperature (config.calibration_temperature), which minimises the held-out log-loss;
- the familiarity detector (config.familiarity_threshold and two buffers): class means and shared covariance of
  the training folds' pooled features, and the held-out distances' 95th percentile as the threshold;
- with --healthy-false-alarms F, the operating point: an offset added to the notumor logit (the classifier's bias,
  so every user of the weights gets it) after which at most a share F of the held-out healthy slices is called a
  tumor. Fitted first; the temperature is then fitted on the shifted logits.

Then the folder is written as the release (float16 shards of <= 15 MB, loading as float32), reloaded as a user would
load it, and every reported number is measured on that reloaded model: held-out accuracy, log-loss and calibration
error before and after, the share of held-out slices called unfamiliar, the held-out slices of each source (for a
multi-source dataset), and for each --external folder (one folder per class, as `evaluation.py external` reads
them) the accuracy, the tumor slices found, the healthy slices called notumor and the share called unfamiliar. The
numbers go into the model card and into --report; --summary adds `evaluation.py summary`'s cross-validation table
to the card. Since those fitted outputs are scored on the slices they were fitted on, the report also cross-fits
them (`held_out_scores_cross_fitted`): fitted on one half of the fold and scored on the other, both ways round.
"""

import argparse
import datetime
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForImageClassification

from brain_resnet.calibration import (
    CROSS_FIT_REPEATS,
    UNFAMILIAR_QUANTILE,
    cross_fitted_scores,
    expected_calibration_error,
    fit_familiarity,
    fit_temperature,
    notumor_offset,
    storable_precision,
    unfamiliar_threshold,
)
from brain_resnet.cli import UsageError, hub_repo_id, number
from brain_resnet.data import ANY_TUMOUR, NOTUMOR, decode_images, load_table
from brain_resnet.engine import model_input
from brain_resnet.external import TUMOR, external_files, external_metrics, read_external
from brain_resnet.hub import save_model_folder, upload
from brain_resnet.modeling import BrainResNetForImageClassification, BrainResNetImageProcessor
from brain_resnet.reports import render_model_card, render_summary_section
from brain_resnet.runs import (
    LIST_OPTIONS,
    changed_settings,
    check_lists_unchanged,
    read_json,
    shown_path,
    write_json,
)

MODEL_CARD_TEMPLATE = Path(__file__).resolve().parent / "model_card.md"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="make_release.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", type=Path, help="a fold folder of a finished train.py run, such as runs/X/fold-0")
    parser.add_argument("--output", type=Path, default=Path("release"), help="the release folder to (re)write")
    parser.add_argument(
        "--external", type=Path, action="append", default=[], help="a folder of other-source slices (repeatable)"
    )
    parser.add_argument(
        "--summary",
        type=Path,
        help="`evaluation.py summary` output (results/summary.json) whose cross-validation table goes into the card",
    )
    parser.add_argument(
        "--healthy-false-alarms",
        type=number(float, 0, 0.5, low_inclusive=False),
        help="set the operating point so that at most this share of held-out healthy slices is called a tumor "
        "(default: the top class as trained)",
    )
    parser.add_argument(
        "--mirror-average",
        action="store_true",
        help="classify each slice with its left-right mirror image (config.mirror_average), so that both display "
        "conventions get one answer; everything is fitted and scored that way",
    )
    parser.add_argument(
        "--recipe-cross-validation",
        type=Path,
        metavar="JSON",
        help="the release's recipe cross-validated over every fold (results/gpu-6/recipe-cross-validation.json, by "
        "results/gpu-6/operating_points.py): checked to be this run's recipe, operating point and mirror averaging, "
        "then stored beside the release's own held-out figure (training_info.recipe_cross_validation), where the "
        "Space shows it",
    )
    parser.add_argument("--report", type=Path, help="JSON file for every measured number (default: print only)")
    parser.add_argument(
        "--hub-model-id",
        type=hub_repo_id,
        help="the Hub repo the card names (default: --push-to-hub's, else the output folder)",
    )
    parser.add_argument(
        "--push-to-hub", metavar="REPO_ID", type=hub_repo_id, help="then upload the release folder to this model repo"
    )
    parser.add_argument("--batch-size", type=number(int, 1), default=64)
    parser.add_argument("--workers", type=number(int, 1), default=2, help="image-decoding processes")
    args = parser.parse_args(argv)
    if args.hub_model_id and args.push_to_hub and args.hub_model_id != args.push_to_hub:
        parser.error("--hub-model-id and --push-to-hub name different repos")
    args.hub_model_id = args.hub_model_id or args.push_to_hub
    args.command = shlex.join(["python", "make_release.py", *(sys.argv[1:] if argv is None else argv)])
    return args


@torch.no_grad()
def logits_and_features(model, images: torch.Tensor, processor, batch_size: int) -> tuple[torch.Tensor, np.ndarray]:
    """Float32 logits (as trained, before any temperature) and pooled features of uint8 (N, 1, S, S) slices."""
    logits, features = [], []
    for batch in images.split(batch_size):
        pooled = model.pooled_features(model_input(batch.float().div_(255), processor))
        logits.append(model.classifier(pooled))
        features.append(pooled)
    return torch.cat(logits).float(), torch.cat(features).float().numpy()


@torch.no_grad()
def released_outputs(model, images: torch.Tensor, processor, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and unfamiliarity as the release gives them to its users."""
    probs, unfamiliarity = [], []
    for batch in images.split(batch_size):
        outputs = model(pixel_values=model_input(batch.float().div_(255), processor))
        probs.append(outputs.logits.softmax(dim=1))
        unfamiliarity.append(outputs.unfamiliarity)
    return torch.cat(probs).numpy(), torch.cat(unfamiliarity).numpy()


def shift_notumor_logit(
    model, held_logits: torch.Tensor, labels: np.ndarray, notumor: int, false_alarms: float
) -> float:
    """Add the operating point's offset to the classifier's notumor bias, as the float16 release will store it,
    and to the held-out logits; returns the offset applied."""
    bias = model.classifier[-1].bias.data
    wanted = float(bias[notumor]) + notumor_offset(held_logits, labels, notumor, false_alarms)
    stored = np.float16(wanted)
    if float(stored) < wanted:  # round up: never more false alarms than asked for
        stored = np.nextafter(stored, np.float16(np.inf))
    offset = float(stored) - float(bias[notumor])
    bias[notumor] = float(stored)
    held_logits[:, notumor] += offset
    return offset


def held_out_scores(
    probs: np.ndarray, labels: np.ndarray, unfamiliarity: np.ndarray, groups: np.ndarray, shares: dict
) -> dict:
    """`shares`: external_metrics of the same slices, whose accuracy, tumors found and healthy slices called healthy
    (with their 95% intervals) stand beside the probabilities' scores."""
    return {
        "slices": int(len(labels)),
        "groups": int(len(np.unique(groups))),  # near-duplicates and adjacent slices: fewer independent cases
        **{key: shares[key] for key in ("accuracy", "tumor_found", "notumor_specificity", "intervals")},
        "log_loss": float(F.nll_loss(torch.from_numpy(np.log(np.clip(probs, 1e-12, 1))), torch.from_numpy(labels))),
        "calibration_error": expected_calibration_error(probs, labels),
        "unfamiliar": float(np.mean(unfamiliarity > 1)),
    }


def subset_accuracy(truths: np.ndarray, predicted: np.ndarray, subset: np.ndarray) -> float | None:
    """Accuracy on the slices of a named class (not `tumor`) within `subset`; None when there are none."""
    scored = subset & (truths != TUMOR)
    return float(np.mean(truths[scored] == predicted[scored])) if scored.any() else None


# What defines a recipe: every run setting but the seed, the precision policy and where the dataset lay
NOT_RECIPE = ("seed", "mixed_precision", "dataset")


def recipe_cross_validation(path: Path, settings: dict, args: argparse.Namespace) -> dict:
    """The recipe's cross-validated accuracy from `path`, once sure it is this release's recipe (compared as
    `--resume` compares a run's settings), classified this release's way."""
    recipe = read_json(path)
    needed = ("settings", "accuracy", "interval", "folds", "device", "healthy_false_alarms", "mirror_average")
    if recipe is None or any(key not in recipe for key in needed):
        raise UsageError(f"--recipe-cross-validation {path}: not a file that results/gpu-6/operating_points.py wrote")
    theirs = recipe["settings"]
    differences = [
        f"{name} {theirs.get(name)} (the release's: {settings[name]})"
        for name in changed_settings(theirs, settings)
        if name not in NOT_RECIPE
    ]
    if Path(str(theirs.get("dataset"))).name != Path(str(settings["dataset"])).name:
        differences.append(f"dataset {theirs.get('dataset')} (the release's: {settings['dataset']})")
    if recipe["healthy_false_alarms"] != args.healthy_false_alarms:
        differences.append(
            f"operating point {recipe['healthy_false_alarms']} (the release's: {args.healthy_false_alarms})"
        )
    if recipe["mirror_average"] != args.mirror_average:
        differences.append(f"mirror averaging {recipe['mirror_average']} (the release's: {args.mirror_average})")
    if differences:
        raise UsageError(f"--recipe-cross-validation {path} is another recipe: {'; '.join(differences)}")
    return {key: recipe[key] for key in ("folds", "accuracy", "interval", "device")}


def check_output(output: Path, model: Path) -> None:
    """--output is replaced whole at the end: it must be new, empty or an earlier release, never the training run
    or a folder of other files."""
    if not output.exists():
        return
    if not output.is_dir():
        raise UsageError(f"--output {output} is a file: give a folder for the release")
    resolved, run = output.resolve(), model.parent.resolve()
    if resolved == model.resolve() or resolved == run or run.is_relative_to(resolved):
        raise UsageError(f"--output {output} would replace the training run {model.parent}: give another folder")
    if any(output.iterdir()) and (read_json(output / "config.json") or {}).get("model_type") != "brain_resnet":
        raise UsageError(f"--output {output} holds other files, not an earlier release: give a new or empty folder")


def make_release(args: argparse.Namespace) -> dict:
    run_dir = args.model.parent
    saved, results = read_json(run_dir / "run_args.json"), read_json(run_dir / "cv_results.json")
    if saved is None or results is None or not args.model.name.startswith("fold-"):
        raise UsageError(f"{args.model} is not a fold folder of a finished train.py run")
    fold = int(args.model.name.split("-")[1])
    check_output(args.output, args.model)
    if str(fold) not in results.get("folds", {}):
        raise UsageError(f"{run_dir}/cv_results.json has no finished fold {fold}")
    settings = saved["settings"]
    check_lists_unchanged(settings)  # the held-out rows must be the ones the run held out
    model = BrainResNetForImageClassification.from_pretrained(args.model).eval()
    processor = BrainResNetImageProcessor.from_pretrained(args.model)
    class_names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    external = {folder: external_files(folder, class_names) for folder in args.external}  # checked before the work
    if args.healthy_false_alarms is not None and NOTUMOR not in class_names:
        raise UsageError(f"--healthy-false-alarms: the model has no {NOTUMOR!r} class")
    notumor = class_names.index(NOTUMOR) if NOTUMOR in class_names else None
    summary = read_json(args.summary) if args.summary is not None else None
    if args.summary is not None and "protocols" not in (summary or {}):
        raise UsageError(f"--summary {args.summary}: no such `evaluation.py summary` output")
    recipe = (
        recipe_cross_validation(args.recipe_cross_validation, settings, args)
        if args.recipe_cross_validation is not None
        else None
    )
    model = model.half().float()  # what the float16 release will compute: fit on the shipped weights
    model.config.mirror_average = args.mirror_average

    print(f"Decoding {settings['dataset']} ({settings['protocol']} protocol) ...")
    table = load_table(
        settings["dataset"],
        settings["protocol"],
        with_test=False,
        sources=settings.get("sources"),
        **{name: settings.get(name) for name in LIST_OPTIONS},
    )
    typed = table.labels != ANY_TUMOUR  # untyped tumours have no class to calibrate or to take a class mean of
    held_out, training = (table.folds == fold) & typed, (table.folds != fold) & typed
    labels = table.labels
    if args.healthy_false_alarms is not None:
        healthy_groups = np.unique(table.groups[held_out & (labels == notumor)])
        if len(healthy_groups) < 2:  # cross-fitting sets it on one half of the fold and scores the other
            raise UsageError(
                f"--healthy-false-alarms: held-out fold {fold} has {len(healthy_groups)} near-duplicate group(s) of "
                "healthy slices; setting and cross-checking the operating point needs at least two"
            )
    (images,) = decode_images(table.images, processor, [processor.size], args.workers)

    print(f"Fitting on the {held_out.sum():,} slices of held-out fold {fold} ...")
    held_logits, held_features = logits_and_features(model, images[held_out], processor, args.batch_size)
    _, train_features = logits_and_features(model, images[training], processor, args.batch_size)
    trained_logits = held_logits.clone()  # before any operating point: the "as trained" scores
    if args.healthy_false_alarms is not None:
        offset = shift_notumor_logit(model, held_logits, labels[held_out], notumor, args.healthy_false_alarms)
        at_point = float(np.mean(held_logits.argmax(dim=1).numpy() == labels[held_out]))
        model.config.training_info = model.config.training_info | {  # `accuracy` stays train.py's, as trained
            "operating_point": {"healthy_false_alarms": args.healthy_false_alarms, "notumor_logit_offset": offset},
            "accuracy_at_operating_point": at_point,
        }
    temperature = fit_temperature(held_logits, torch.from_numpy(labels[held_out]))
    means, precision = fit_familiarity(train_features, labels[training], model.config.num_labels)
    precision = storable_precision(precision)
    model.set_familiarity(means.half().float(), precision.half().float(), threshold=1.0)  # set from distances next
    distances = model.familiarity_distance(torch.from_numpy(held_features)).numpy()
    model.config.familiarity_threshold = unfamiliar_threshold(distances)
    cross_fitted = cross_fitted_scores(
        trained_logits, distances, labels[held_out], table.groups[held_out], notumor, args.healthy_false_alarms
    )
    model.config.calibration_temperature = temperature
    model.config.training_info = model.config.training_info | {
        "calibrated_on": f"fold {fold} (held out)",
        "calibration_temperature": round(temperature, 4),
        "familiarity_quantile": UNFAMILIAR_QUANTILE,
        # out of sample for everything fitted on the fold (operating point, temperature): the Space shows it
        "accuracy_cross_fitted": round(cross_fitted["accuracy"]["mean"], 4),
    }
    if (interval := cross_fitted["accuracy"]["interval"]) is not None:  # what other patients could score
        model.config.training_info["accuracy_cross_fitted_interval"] = [round(bound, 4) for bound in interval]
    if recipe is not None:  # one fold's figure is one draw: the recipe over every fold is the steadier one
        model.config.training_info["recipe_cross_validation"] = recipe

    args.output.resolve().parent.mkdir(parents=True, exist_ok=True)
    # Written beside the output and moved into place at the end: a failure leaves the previous release intact.
    with tempfile.TemporaryDirectory(dir=args.output.resolve().parent) as scratch:
        staging = Path(scratch) / "release"
        save_model_folder(model, processor, staging, half_storage=True)
        released = AutoModelForImageClassification.from_pretrained(staging, trust_remote_code=True).eval()
        probs, unfamiliarity = released_outputs(released, images[held_out], processor, args.batch_size)
        uncalibrated = torch.softmax(trained_logits, dim=1).numpy()
        truths = np.asarray(class_names)[labels[held_out]]  # the held-out slices' classes and calls, by name
        predicted = np.asarray(class_names)[probs.argmax(axis=1)]
        groups = table.groups[held_out]
        report = {
            "command": args.command,
            "device": "cpu",
            "date": datetime.date.today().isoformat(),
            "model": str(args.model),
            "run_command": saved["command"],
            "training_device": results["folds"][str(fold)]["device"],
            "dataset": shown_path(settings["dataset"]),
            "held_out": f"fold {fold} ({settings['protocol']} protocol)",
            "training_slices": int((table.folds != fold).sum()),  # untyped tumours too: the model trained on them
            "untyped_training_slices": int(((table.folds != fold) & ~typed).sum()),
            "calibration_temperature": temperature,
            "familiarity_threshold": released.config.familiarity_threshold,
            "mirror_average": args.mirror_average,
            "held_out_scores": held_out_scores(
                probs, labels[held_out], unfamiliarity, groups, external_metrics(truths, predicted, groups)
            ),
            "held_out_scores_uncalibrated": {
                "accuracy": float(np.mean(trained_logits.argmax(dim=1).numpy() == labels[held_out])),
                "log_loss": float(F.cross_entropy(trained_logits, torch.from_numpy(labels[held_out]))),
                "calibration_error": expected_calibration_error(uncalibrated, labels[held_out]),
            },
            "held_out_scores_cross_fitted": cross_fitted | {"repeats": CROSS_FIT_REPEATS},
            "recipe_cross_validation": None if recipe is None else recipe | {"file": str(args.recipe_cross_validation)},
            "external": {},
        }
        if args.healthy_false_alarms is not None:
            healthy = labels[held_out] == notumor
            report["operating_point"] = model.config.training_info["operating_point"] | {
                "held_out_healthy_called_tumor": float(np.mean(probs[healthy].argmax(axis=1) != notumor))
            }
        if table.sources is not None:  # the held-out slices of each source, scored as `external` scores a folder
            sources = np.asarray(table.sources)[held_out]
            report["held_out_by_source"] = {
                source: external_metrics(truths[mine], predicted[mine], groups[mine])
                | {"unfamiliar": float(np.mean(unfamiliarity[mine] > 1)), "groups": len(np.unique(groups[mine]))}
                for source in sorted(set(sources))
                if (mine := sources == source).any()
            }
        for folder, files in external.items():
            slices, kept, skipped = read_external(files)
            (external_images,) = decode_images(slices, processor, [processor.size], args.workers)
            probs, unfamiliarity = released_outputs(released, external_images, processor, args.batch_size)
            predicted = np.array([class_names[i] for i in probs.argmax(axis=1)])
            truths = np.array([truth for _, truth in kept])
            report["external"][folder.name] = external_metrics(truths.tolist(), predicted.tolist()) | {
                "unfamiliar": float(np.mean(unfamiliarity > 1)),
                # does the warning single out the slices the model gets wrong?
                "accuracy_familiar": subset_accuracy(truths, predicted, unfamiliarity <= 1),
                "accuracy_unfamiliar": subset_accuracy(truths, predicted, unfamiliarity > 1),
                "skipped": skipped,
            }
        model_id = args.hub_model_id or str(args.output)
        card = render_model_card(MODEL_CARD_TEMPLATE.read_text(), results, fold, model_id, release_report=report)
        if summary is not None:
            card = render_summary_section(card, summary, str(args.summary))
            report["summary"] = str(args.summary)
        (staging / "README.md").write_text(card)
        if args.output.exists():
            shutil.rmtree(args.output)
        shutil.move(staging, args.output)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.report, report)
    return report


def print_report(report: dict) -> None:
    scores, before = report["held_out_scores"], report["held_out_scores_uncalibrated"]
    print(
        f"{report['held_out']}: accuracy {scores['accuracy']:.4f}; log-loss {before['log_loss']:.4f} -> "
        f"{scores['log_loss']:.4f} and calibration error {before['calibration_error']:.4f} -> "
        f"{scores['calibration_error']:.4f} at temperature {report['calibration_temperature']:.3f}; "
        f"{scores['unfamiliar']:.1%} called unfamiliar"
    )
    if point := report.get("operating_point"):
        print(
            f"operating point: notumor logit {point['notumor_logit_offset']:+.3f}, "
            f"{point['held_out_healthy_called_tumor']:.1%} of held-out healthy slices called a tumor "
            f"(asked for at most {point['healthy_false_alarms']:.1%}); accuracy as trained {before['accuracy']:.4f}"
        )
    crossed = report["held_out_scores_cross_fitted"]
    print(
        "cross-fitted (fitted on one half of the fold, scored on the other): "
        + ", ".join(
            f"{key} {value['mean']:.4f} ± {value['std']:.4f}" for key, value in crossed.items() if key != "repeats"
        )
    )
    for name, metrics in report["external"].items():
        shown = ", ".join(
            f"{key} {metrics[key]:.4f}"
            for key in (
                "accuracy",
                "tumor_found",
                "notumor_specificity",
                "unfamiliar",
                "accuracy_familiar",
                "accuracy_unfamiliar",
            )
            if metrics.get(key) is not None
        )
        print(f"{name} ({metrics['slices']} slices): {shown}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = make_release(args)
        print_report(report)
        print(f"Wrote {args.output}" + (f" and {args.report}" if args.report else ""))
        if args.push_to_hub:
            upload(args.output, args.push_to_hub, f"`hf upload {args.push_to_hub} {args.output}` uploads it")
    except UsageError as error:
        print(f"make_release.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
