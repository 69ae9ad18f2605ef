"""What a run reports: its plots, each model folder's card (results section and model-index metadata), the
config's training_info and the line printed per fold; and the release card's section that make_release.py fills."""

import datetime
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from .metrics import METRICS
from .runs import FULL, LIST_OPTIONS, SHORTCUT_SETTINGS, epoch_records, fold_name, shown_path

# train.py settings that training_info names when they are on
SWITCHES = (*SHORTCUT_SETTINGS, *LIST_OPTIONS)
RESULTS_START, RESULTS_END = "<!-- train.py:results:start -->", "<!-- train.py:results:end -->"
RELEASE_START, RELEASE_END = "<!-- make_release.py:release:start -->", "<!-- make_release.py:release:end -->"
SUMMARY_START, SUMMARY_END = "<!-- make_release.py:summary:start -->", "<!-- make_release.py:summary:end -->"


RELEASE_ONLY = re.compile(r"<!-- release-only -->(.*?)<!-- /release-only -->", re.DOTALL)


def marked_region(text: str, start_marker: str, end_marker: str) -> tuple[int, int]:
    """Where the text between the two markers starts and ends; ValueError if the markers are missing."""
    start, end = text.find(start_marker), text.find(end_marker)
    if start < 0 or end < start:
        raise ValueError(f"the model card template lacks the {start_marker} ... {end_marker} markers")
    return start + len(start_marker), end


def replace_region(text: str, region: tuple[int, int], content: str) -> str:
    return f"{text[: region[0]]}\n{content}\n{text[region[1] :]}"


def write_reports(out: Path, results: dict, template: str, release_id: str | None = None) -> None:
    """Plots of the run, and each model folder's card from `template` (model_card.md), naming full/ by `release_id`
    (its Hub repo) when given."""
    plot_learning_curves(epoch_records(out / "log.jsonl"), out / "learning_curves.png")
    matrix, title = None, None
    if "confusion_matrix" in results.get("summary", {}):
        matrix, title = (
            results["summary"]["confusion_matrix"],
            "Out-of-fold predictions, folds " + ", ".join(map(str, results["summary"]["folds"])),
        )
    elif "confusion_matrix" in results.get(FULL, {}):
        matrix, title = results[FULL]["confusion_matrix"], "Full model on the test split"
    if matrix is not None:
        plot_confusion_matrix(np.array(matrix), results["class_names"], title, out / "confusion_matrix.png")
    for fold in [*results.get("folds", {}), *([FULL] if FULL in results else [])]:
        folder = out / fold_name(fold if fold == FULL else int(fold))
        if not folder.is_dir():  # a fold recorded by another machine, whose model did not come back
            continue
        model_id = release_id if fold == FULL and release_id else str(folder)
        (folder / "README.md").write_text(render_model_card(template, results, fold, model_id))


def plot_learning_curves(records: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (fold, epochs) in enumerate(records.items()):
        color, xs = f"C{i}", sorted(epochs)
        loss_axis.plot(xs, [epochs[e]["train_loss"] for e in xs], color=color, label=f"{fold_name(fold)} train")
        if all("eval_loss" in epochs[e] for e in xs):
            loss_axis.plot(
                xs, [epochs[e]["eval_loss"] for e in xs], "--", color=color, label=f"{fold_name(fold)} held out"
            )
            accuracy_axis.plot(xs, [epochs[e]["eval_accuracy"] for e in xs], color=color, label=fold_name(fold))
        accuracy_axis.plot(
            xs, [epochs[e]["train_accuracy"] for e in xs], ":", color=color, alpha=0.6, label=f"{fold_name(fold)} train"
        )
    loss_axis.set(xlabel="epoch", ylabel="cross-entropy", title="Loss (train: label-smoothed, augmented)")
    accuracy_axis.set(xlabel="epoch", ylabel="accuracy", title="Accuracy (held out; dotted: train)")
    for axis in (loss_axis, accuracy_axis):
        axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_confusion_matrix(matrix: np.ndarray, class_names: list[str], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    figure, axis = plt.subplots(figsize=(5.5, 4.8))
    axis.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for (row, col), count in np.ndenumerate(matrix):
        color = "white" if rates[row, col] > 0.5 else "black"
        axis.text(col, row, f"{count}\n{rates[row, col]:.1%}", ha="center", va="center", fontsize=8, color=color)
    ticks = range(len(class_names))
    axis.set(xticks=ticks, yticks=ticks, xticklabels=class_names, yticklabels=class_names)
    axis.set(xlabel="predicted", ylabel="true", title=title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def format_stat(stat: dict | None, spec: str = ".4f") -> str:
    return f"{stat['mean']:{spec}} ± {stat['std']:{spec}}" if stat else "–"


def cross_validation_scheme(results: dict) -> str:
    """How the run split its data, as the card names it: a cross-validation, or the one fold held out."""
    settings, folds = results["args"]["settings"], sorted(results.get("folds", {}), key=int)
    if not folds:
        return "trained on"
    if len(folds) == 1:  # a release's run: one model, one fold it never trained on
        return f"fold {folds[0]} of the {settings['protocol']} {results['num_folds']}-fold split held out, of"
    return f"{settings['protocol']} {results['num_folds']}-fold cross-validation of"


def results_markdown(results: dict, fold, model_id: str, released: bool = False) -> str:
    """The model card's results section: the cross-validation table and what these weights are (`released`: a
    make_release.py folder, whose operating point and calibration the release section scores)."""
    settings, class_names = results["args"]["settings"], results["class_names"]
    folds, summary = results.get("folds", {}), results.get("summary", {})
    lines = [
        f"Trained with `{results['args']['command']}` on {results['device']}: {settings['model']} model, "
        f"{cross_validation_scheme(results)} `{shown_path(settings['dataset'])}`, "
        f"{settings['epochs']} epoch{'s' if settings['epochs'] != 1 else ''}, "
        f"{settings['image_size']} px, batch {settings['batch_size']}, peak lr {settings['lr']}, "
        f"seed {settings['seed']}.",
        "",
    ]
    if folds:
        header = [
            "Fold",
            "Train / held out",
            "Accuracy",
            "Macro-F1",
            "ROC-AUC (OvR)",
            *(f"Recall {c}" for c in class_names),
        ]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for key in sorted(folds, key=int):
            entry = folds[key]
            cells = [key, f"{entry['num_train']:,} / {entry['num_eval']:,}"]
            cells += [f"{entry[m]:.4f}" if entry.get(m) is not None else "–" for m in METRICS]
            cells += [f"{entry['recall'][c]:.4f}" for c in class_names]
            lines.append("| " + " | ".join(cells) + " |")
        if len(folds) > 1:
            cells = ["**mean ± std**", ""]
            cells += [format_stat(summary.get(m)) for m in METRICS]
            cells += [f"{summary['recall'][c]:.4f}" if c in summary.get("recall", {}) else "–" for c in class_names]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        by_source = defaultdict(list)
        for entry in folds.values():
            for source, accuracy in entry.get("accuracy_by_source", {}).items():
                by_source[source].append(accuracy)
        if by_source:
            listing = ", ".join(f"{s} {np.mean(v):.4f}" for s, v in sorted(by_source.items()))
            over = ", mean over folds" if len(folds) > 1 else ""
            lines += [f"Held-out accuracy by image source (top class as trained{over}): {listing}.", ""]
        lines += [
            f"Training throughput: {format_stat(summary.get('train_images_per_s'), ',.0f')} images/s "
            f"(median epoch of each fold); {summary['wall_seconds']:.0f} s for {len(folds)} fold(s).",
            "",
        ]
    else:
        lines += ["This run has no cross-validation folds.", ""]
    if fold == FULL:
        entry = results[FULL]
        lines.append(f"**These weights** are the release model, trained on all {entry['num_train']:,} training images.")
        if "accuracy" in entry:
            lines.append(
                f"On the dataset's test split ({entry['num_eval']:,} images): accuracy {entry['accuracy']:.4f}, "
                f"macro-F1 {entry['macro_f1']:.4f}, ROC-AUC {entry['roc_auc_macro']:.4f}."
            )
    elif released:
        entry = folds[str(fold)]
        lines.append(
            f"**These weights** are fold {fold}'s model, trained on the other folds ({entry['num_train']:,} images), "
            f"with the operating point and calibration that make_release.py fitted on fold {fold}: its row of the "
            "table scores them as trained, the next section as released."
        )
    else:
        entry = folds[str(fold)]
        lines.append(
            f"**These weights** are fold {fold}'s model: trained on the other folds ({entry['num_train']:,} images), "
            f"so they score its row of the table, not the release model's."
        )
    lines += [
        "",
        "```python",
        "from transformers import AutoModelForImageClassification",
        "",
        f'model = AutoModelForImageClassification.from_pretrained("{model_id}", trust_remote_code=True)',
        "```",
    ]
    return "\n".join(lines)


def model_index_results(results: dict, release_report: dict | None = None) -> list:
    """The card's model-index: the cross-validation means (one fold: its scores as trained), the release model's
    test-split scores, and for a make_release.py folder first its accuracy as released, cross-fitted."""
    from huggingface_hub import EvalResult

    settings = results["args"]["settings"]
    dataset = settings["dataset"]
    dataset_type = Path(dataset).name if Path(dataset).exists() else dataset
    found = []
    summary = results.get("summary", {})
    if summary.get("folds") and len(summary["folds"]) == 1:
        held_out = f"{settings['protocol']} fold {summary['folds'][0]} held out"
        split_name, scored = f"{dataset_type} ({held_out})", f"held-out fold {summary['folds'][0]}, as trained"
    else:
        split_name = f"{dataset_type} ({settings['protocol']} {results['num_folds']}-fold CV)"
        scored = f"mean over folds {summary.get('folds')}"

    def result(name: str, split: str, metric: str, value: float, label: str):
        return EvalResult(
            task_type="image-classification",
            dataset_type=dataset_type,
            dataset_name=name,
            dataset_split=split,
            metric_type=metric,
            metric_value=round(value, 4),
            metric_name=label,
        )

    if release_report and (crossed := release_report.get("held_out_scores_cross_fitted")):
        label = "accuracy (as released: operating point and calibration fitted on the other half of the held-out fold)"
        found.append(result(split_name, "train", "accuracy", crossed["accuracy"]["mean"], label))
    for metric, name in (("accuracy", "accuracy"), ("macro_f1", "f1"), ("roc_auc_macro", "roc_auc")):
        if metric in summary:
            found.append(result(split_name, "train", name, summary[metric]["mean"], f"{metric} ({scored})"))
        if results.get(FULL, {}).get(metric) is not None:
            label = f"{metric} (release model, test split)"
            found.append(result(dataset_type, "test", name, results[FULL][metric], label))
    return found


def render_model_card(template: str, results: dict, fold, model_id: str, release_report: dict | None = None) -> str:
    """model_card.md with this run's results between its markers and in the model-index metadata; given
    make_release.py's report, a release's card, its release section filled too."""
    from huggingface_hub import ModelCard

    card = ModelCard(template)
    released = release_report is not None
    # The template's facts about the released weights themselves: kept (without their markers) in a release's card,
    # left out of a cross-validation fold's, which they would misdescribe.
    card.text = RELEASE_ONLY.sub(r"\1" if released else "", card.text)
    region = marked_region(card.text, RESULTS_START, RESULTS_END)
    card.text = replace_region(card.text, region, results_markdown(results, fold, model_id, released))
    if released:
        card.text = render_release_section(card.text, release_report)
    eval_results = model_index_results(results, release_report)
    if eval_results:
        card.data.model_name = model_id.rstrip("/").split("/")[-1]
        card.data.eval_results = eval_results
    dataset = results["args"]["settings"]["dataset"]
    if not Path(dataset).exists():  # a Hub dataset id
        card.data.datasets = [dataset]
    return str(card)


def training_info(args, fold, entry: dict, results: dict) -> dict:
    """config.training_info: flat, so the Space can list it; its presence marks the weights as trained."""
    info = {
        "trainer": "train.py",
        "dataset": args.dataset,
        "protocol": args.protocol,
        "folds": results["num_folds"],
        "trained_on": "all folds" if fold == FULL else f"all folds but fold {fold}",
        "model": args.model,
        **({"init_from": args.init_from} if args.init_from else {}),
        "epochs": args.epochs,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "lr": args.lr,
        **({"ema_decay": args.ema_decay} if args.ema_decay else {}),
        # the data, augmentation and loss switches that are on (the rest of the settings: run_args.json)
        **({"sources": ",".join(args.sources)} if args.sources else {}),
        **{name: getattr(args, name) for name in SWITCHES if getattr(args, name)},
        "seed": args.seed,
        "device": entry["device"],
        "date": datetime.date.today().isoformat(),
    }
    if "eval_split" in entry:
        info["evaluated_on"] = entry["eval_split"]
        info |= {name: entry[name] for name in METRICS if entry.get(name) is not None}
    if fold == FULL and "summary" in results:
        summary = results["summary"]
        info["cv_folds"] = len(summary["folds"])
        info |= {
            f"cv_{name}_{stat}": summary[name][stat] for name in METRICS if name in summary for stat in ("mean", "std")
        }
    return info


def fold_summary(fold, entry: dict) -> str:
    scores = ", ".join(f"{name} {entry[name]:.4f}" for name in METRICS if entry.get(name) is not None)
    return (
        f"{fold_name(fold)}: {scores or 'no held-out data'}; {entry['train_images_per_s']:,.0f} train images/s, "
        f"{entry['wall_seconds']:.0f} s"
    )


INTERVALS_NOTE = (
    "In brackets, 95% intervals: the held-out slices' near-duplicate groups resampled whole (a cluster bootstrap), "
    "since adjacent slices of one patient are about one case; where every slice is right, the exact binomial "
    "interval with each group as one case. They say how far another set of patients like these could move a "
    "score; the cross-fitted std does not, it varies only the fitting."
)


def with_interval(value: float | None, interval: list[float] | None) -> str:
    """A share as a table shows it: `0.9424 (0.928–0.955)`, or `–` when there were no such slices."""
    if value is None:
        return "–"
    return f"{value:.4f}" if interval is None else f"{value:.4f} ({interval[0]:.3f}–{interval[1]:.3f})"


def release_markdown(report: dict) -> str:
    """The release card's section: what make_release.py fitted and measured on the shipped weights."""
    scores, before = report["held_out_scores"], report["held_out_scores_uncalibrated"]
    point = report.get("operating_point")
    released = f"temperature {report['calibration_temperature']:.3f}"
    if point:
        released = f"notumor logit {point['notumor_logit_offset']:+.3f}, {released}"
    lines = []
    if report["training_device"] == "cpu":
        lines += [
            "**Trained on a CPU**: train.py runs the same recipe there as on a GPU (bf16 autocast where the "
            "processor has it), only slower; `training_info` records the machine and the settings.",
            "",
        ]
    lines += [
        f"Made from `{report['model']}` with `{report['command']}` ({report['date']}); every number below was "
        "measured on the shipped float16-stored weights, loaded as a user loads them.",
        "",
    ]
    if report.get("mirror_average"):
        lines += [
            "**A slice and its mirror image get one answer** (`config.mirror_average`): the model classifies the "
            "mean of their pooled features, so the left-right display convention does not matter; every number "
            "below is measured that way.",
            "",
        ]
    groups = f" ({scores['groups']:,} groups of near-duplicates and adjacent slices)" if "groups" in scores else ""
    lines += [
        f"On {report['held_out']} of `{report['dataset']}`, the {scores['slices']:,} slices{groups} these weights "
        "never trained on:",
        "",
        "| | accuracy | log-loss | calibration error (ECE) | called unfamiliar |",
        "|---|---|---|---|---|",
        f"| as trained{', mirror-averaged' if report.get('mirror_average') else ''} "
        f"| {before.get('accuracy', scores['accuracy']):.4f} | {before['log_loss']:.4f} "
        f"| {before['calibration_error']:.4f} | – |",
        f"| released ({released}) | {with_interval(scores['accuracy'], scores.get('intervals', {}).get('accuracy'))} | "
        f"{scores['log_loss']:.4f} | {scores['calibration_error']:.4f} | {scores['unfamiliar']:.1%} |",
    ]
    crossed = report.get("held_out_scores_cross_fitted")
    if crossed:
        keys = ("accuracy", "log_loss", "calibration_error")
        shown = [f"{crossed[key]['mean']:.4f} ± {crossed[key]['std']:.4f}" for key in keys]
        if interval := crossed["accuracy"].get("interval"):  # reports since the interval was computed
            shown[0] += f" ({interval[0]:.3f}–{interval[1]:.3f})"
        shown.append(f"{crossed['unfamiliar']['mean']:.1%} ± {crossed['unfamiliar']['std']:.1%}")
        lines.append(f"| released, fitted on the other half (cross-fitted) | {' | '.join(shown)} |")
    lines.append("")
    if "intervals" in scores:  # reports since intervals were computed
        lines += [INTERVALS_NOTE, ""]
    if point:
        lines += [
            f"The operating point was set on these slices' healthy ones: the notumor logit is shifted by "
            f"{point['notumor_logit_offset']:+.3f} (in the classifier's bias) so that at most "
            f"{point['healthy_false_alarms']:.0%} of them are called a tumor "
            f"({point['held_out_healthy_called_tumor']:.1%} are). A model trained with pasted lesions finds more "
            "tumors of unseen sources at equal false alarms; this is where it is told to stand. The accuracy as "
            "trained is that of the top class before the shift.",
            "",
        ]
    lines += [
        "The temperature and the unfamiliarity threshold were fitted on these same slices, so the released row's "
        "log-loss, calibration error and unfamiliar share are in-sample; the temperature does not change the "
        "accuracy.",
        "",
    ]
    if crossed:
        lines += [
            f"The cross-fitted row measures them out of sample: the slices split in two halves (classes stratified, "
            f"near-duplicate groups kept whole), {'the operating point, ' if point else ''}the temperature and the "
            f"threshold fitted on one half and scored on the other, both ways round, mean ± std over "
            f"{crossed['repeats']} random halvings.",
        ]
        if point and "healthy_called_tumor" in crossed:
            lines[-1] += (
                f" So fitted, the operating point called {crossed['healthy_called_tumor']['mean']:.1%} of healthy "
                f"slices a tumor (asked: at most {point['healthy_false_alarms']:.0%}) and "
                f"{crossed['tumors_called_notumor']['mean']:.1%} of tumor slices healthy."
            )
        lines.append("")
    if recipe := report.get("recipe_cross_validation"):
        lines += [
            f"**The same recipe over all {recipe['folds']} folds**, trained again fold by fold (on "
            f"{recipe['device']}) and classified the same way at the same operating point, cross-fitted likewise: "
            f"accuracy {with_interval(recipe['accuracy'], recipe['interval'])} over every fold's held-out slices "
            f"(`{recipe['file']}`). This release's fold is one draw of those; that figure is the steadier one.",
            "",
        ]
    if by_source := report.get("held_out_by_source"):
        grouped = all("groups" in metrics for metrics in by_source.values())  # reports since groups were counted
        lines += [
            "The same held-out slices by source:",
            "",
            f"| source | slices{' (groups)' if grouped else ''} | 4-class accuracy | tumor slices called a tumor "
            "| healthy slices called notumor | called unfamiliar |",
            "|---|---|---|---|---|---|",
        ]
        rows = ({"all": scores} if "intervals" in scores else {}) | by_source  # all: the shares over every source
        for name, metrics in rows.items():
            intervals = metrics.get("intervals", {})
            shown = " | ".join(
                with_interval(metrics.get(key), intervals.get(key))
                for key in ("accuracy", "tumor_found", "notumor_specificity")
            )
            count = f"{metrics['slices']:,} ({metrics['groups']:,})" if grouped else f"{metrics['slices']:,}"
            lines.append(f"| {name} | {count} | {shown} | {metrics['unfamiliar']:.1%} |")
        lines.append("")
    if report["external"]:
        lines += [
            "On slices of sources these weights never trained on:",
            "",
            "| data | slices | 4-class accuracy | tumor slices called a tumor | healthy slices called notumor "
            "| called unfamiliar | accuracy: familiar / unfamiliar slices |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, metrics in report["external"].items():
            cells = [metrics.get(key) for key in ("accuracy", "tumor_found", "notumor_specificity")]
            shown = " | ".join(f"{value:.4f}" if value is not None else "–" for value in cells)
            split = " / ".join(
                f"{value:.4f}" if (value := metrics.get(key)) is not None else "–"
                for key in ("accuracy_familiar", "accuracy_unfamiliar")
            )
            lines.append(f"| {name} | {metrics['slices']} | {shown} | {metrics['unfamiliar']:.1%} | {split} |")
        lines.append("")
    return "\n".join(lines)


def render_release_section(card: str, report: dict) -> str:
    """A rendered model card with its release section filled from make_release.py's report."""
    return replace_region(card, marked_region(card, RELEASE_START, RELEASE_END), release_markdown(report))


def summary_markdown(summary: dict, path: str) -> str:
    """The card's cross-validation section: `evaluation.py summary`'s table of protocols and variants, with the
    scores of the same fold models on other sources and under the shortcut stress test."""
    lines = [
        f"From `{path}` of the project repository (`{summary['command']}`), measured on {summary['device']}: "
        "models trained on the "
        "rows of the cross-validation runs' sources only, each fold's model scored on its held-out fold; the other "
        "columns score the same fold models on slices of a source none of them saw, less its copies of the runs' "
        "own sources' slices (how many, beside its name).",
        "",
        "| protocol | model | folds | accuracy (mean ± std) | macro-F1 | params | shortcut flip rate "
        "| other source | its 4-class accuracy | tumor slices called a tumor | healthy slices called notumor |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for protocol, variants in summary["protocols"].items():
        for variant, entry in variants.items():
            flip = entry.get("shortcut_flip_rate")
            cells = [
                protocol,
                variant,
                str(entry["folds"]),
                f"{entry['accuracy_mean']:.4f} ± {entry['accuracy_std']:.4f}",
                f"{entry['macro_f1_mean']:.4f}",
                f"{entry['params'] / 1e6:.1f} M",
                "–" if flip is None else f"{flip:.4f}",
            ]
            for data, scores in (entry.get("cross_source") or {"–": {}}).items():
                shown = [scores.get(key) for key in ("accuracy", "tumor_found", "notumor_specificity")]
                copies = scores.get("copies_left_out")
                name = f"{data} ({copies} copies left out)" if copies else data
                cells += [name, *("–" if value is None else f"{value:.4f}" for value in shown)]
            lines.append("| " + " | ".join(cells) + " |")
    paired = [
        (protocol, variant, entry["paired_with_improved"])
        for protocol, variants in summary["protocols"].items()
        for variant, entry in variants.items()
        if "paired_with_improved" in entry
    ]
    if paired:
        lines += [
            "",
            "Fold by fold (the variants of a protocol share its folds), the improved model's accuracy minus each "
            "variant's, with the corrected resampled t-test's p (Nadeau & Bengio, 2003), which allows for folds "
            "sharing most of their training slices: a difference with p above 0.05 is within what chance gives.",
            "",
            "| protocol | compared with | folds | mean difference | std of the differences | improved ahead | tied "
            "| p |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {protocol} | {variant} | {p['folds']} | {p['improved_minus_this_mean'] * 100:+.2f} points "
            f"| {p['improved_minus_this_std'] * 100:.2f} | {p['improved_ahead']} | {p['ties']} | {p['p_value']:.2f} |"
            for protocol, variant, p in paired
        ]
    lines.append("")
    return "\n".join(lines)


def render_summary_section(card: str, summary: dict, path: str) -> str:
    """A rendered model card with its cross-validation section filled from `evaluation.py summary`'s output."""
    return replace_region(card, marked_region(card, SUMMARY_START, SUMMARY_END), summary_markdown(summary, path))
