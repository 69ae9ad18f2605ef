"""Would the unfamiliar-image warning catch more of a new source's errors if it also read the earlier stages?

For each released MODEL folder (a 4k-only model made into a release by make_release.py; its run's dataset, sources
and held-out fold are read from its config), the Mahalanobis distance to the nearest class mean (Lee et al., 2018:
class means and one Ledoit-Wolf covariance of the training folds' slices) is computed on the global average of
each feature map the network makes: the stem's and the four stages' (the last is what the release's warning
reads), mirror-averaged as the release's features are. Each stage's threshold is its held-out slices' 95th
percentile; the candidate, fixed before this ran, is the largest of the five stages' distances over their
thresholds, thresholded again at its own held-out 95th percentile, so that 5% of held-out slices raise it, as now.

It prints, for the current warning (the last stage), each stage alone and the candidate: the share of held-out
slices flagged when each threshold is set on the other half of the fold (cross-fitted, 5 halvings, near-duplicate
groups kept whole) and, on the slices of SLICES (a folder with one subfolder per class, of a source the model never
saw), the share flagged and how many of the release's errors of each kind are flagged.

PYTHONPATH=. python results/cpu-warning-stages/stages.py SLICES MODEL [MODEL ...]
"""

import sys
from pathlib import Path

import numpy as np
import torch

from brain_resnet.calibration import CROSS_FIT_REPEATS, cross_fit_halves, fit_familiarity, unfamiliar_threshold
from brain_resnet.data import decode_images, load_table
from brain_resnet.engine import model_input
from brain_resnet.external import external_files, read_external
from brain_resnet.modeling import BrainResNetImageProcessor
from modeling import BrainResNetForImageClassification

STAGES = ("stem", "stage 1", "stage 2", "stage 3", "stage 4 (the release's warning)")


@torch.no_grad()
def stage_features(model, images: torch.Tensor, processor, batch_size: int = 128):
    """Per feature map, (N, channels) global averages, mirror-averaged; and the release's logits."""
    features, logits = [[] for _ in STAGES], []
    for batch in images.split(batch_size):
        pixels = model_input(batch.float() / 255, processor)
        own = model.brain_resnet(pixels, output_hidden_states=True, return_dict=True).hidden_states
        mirrored = model.brain_resnet(pixels.flip(-1), output_hidden_states=True, return_dict=True).hidden_states
        for stage, (a, b) in enumerate(zip(own, mirrored, strict=True)):
            features[stage].append(((a.mean((2, 3)) + b.mean((2, 3))) / 2).float())
        logits.append(model(pixel_values=pixels).logits)
    return [torch.cat(f).numpy() for f in features], torch.cat(logits)


def distances(means: torch.Tensor, precision: torch.Tensor, features: np.ndarray) -> np.ndarray:
    differences = torch.from_numpy(features)[:, None, :] - means[None]
    return ((differences @ precision) * differences).sum(-1).amin(1).numpy()


def flagged_candidate(held: list[np.ndarray], other: list[np.ndarray], fit: np.ndarray) -> np.ndarray:
    """The candidate's flags on `other`, every threshold set on the held-out rows `fit`."""
    scale = [unfamiliar_threshold(stage[fit]) for stage in held]
    held_score = np.max([stage / s for stage, s in zip(held, scale, strict=True)], axis=0)
    other_score = np.max([stage / s for stage, s in zip(other, scale, strict=True)], axis=0)
    return other_score > unfamiliar_threshold(held_score[fit])


def report(model_dir: str, slices_folder: Path) -> None:
    model = BrainResNetForImageClassification.from_pretrained(model_dir).eval()
    processor = BrainResNetImageProcessor.from_pretrained(model_dir)
    info = model.config.training_info
    fold = int(info["evaluated_on"].removeprefix("fold "))
    sources = info.get("sources")
    sources = sources.split(",") if isinstance(sources, str) else sources
    table = load_table(info["dataset"], info["protocol"], with_test=False, sources=sources)
    held_out, training = table.folds == fold, table.folds != fold
    (images,) = decode_images(table.images, processor, [processor.size], 2)
    train_features, _ = stage_features(model, images[training], processor)
    held_features, _ = stage_features(model, images[held_out], processor)
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    files, kept, _ = read_external(external_files(slices_folder, names))
    (new_images,) = decode_images(files, processor, [processor.size], 2)
    new_features, new_logits = stage_features(model, new_images, processor)
    with torch.no_grad():  # the release's own warning, to check the last stage's row against
        released = model(pixel_values=model_input(new_images.float() / 255, processor)).unfamiliarity.numpy() > 1

    held_distances, new_distances = [], []
    for train, held, new in zip(train_features, held_features, new_features, strict=True):
        means, precision = fit_familiarity(train, table.labels[training], model.config.num_labels)
        held_distances.append(distances(means, precision, held))
        new_distances.append(distances(means, precision, new))

    labels, groups = table.labels[held_out], table.groups[held_out]
    everything = np.ones(len(labels), dtype=bool)
    rules = {name: ([held_distances[i]], [new_distances[i]]) for i, name in enumerate(STAGES)}
    rules["candidate: the largest of the five"] = (held_distances, new_distances)

    called = np.array(names)[new_logits.argmax(1).numpy()]
    truth = np.array([name for _, name in kept])
    right, healthy = called == truth, truth == "notumor"
    errors = {
        "errors": ~right,
        "healthy called a tumor": healthy & ~right,
        "tumors called healthy": ~healthy & (called == "notumor"),
        "tumors given the wrong type": ~healthy & ~right & (called != "notumor"),
    }
    print(f"{model_dir}: {held_out.sum()} held-out slices of fold {fold}; {slices_folder}: {len(truth)} slices")
    print("| warning read from | held-out flagged, cross-fitted | new source flagged | " + " | ".join(errors) + " |")
    print("|---" * (3 + len(errors)) + "|")
    for name, (held, new) in rules.items():
        shares = []
        for repeat in range(CROSS_FIT_REPEATS):
            for fit, scored in cross_fit_halves(labels, groups, seed=repeat):
                fit_rows = np.zeros(len(labels), dtype=bool)
                fit_rows[fit] = True
                shares.append(flagged_candidate(held, [h[scored] for h in held], fit_rows).mean())
        flagged = flagged_candidate(held, new, everything)
        counts = " | ".join(f"{flagged[rows].sum()} of {rows.sum()}" for rows in errors.values())
        print(f"| {name} | {np.mean(shares):.1%} | {flagged.mean():.1%} | {counts} |")
    print(f"(the release's own warning flags {released.mean():.1%} of the new source's slices)")
    print()


for run in sys.argv[2:]:
    report(run, Path(sys.argv[1]))
