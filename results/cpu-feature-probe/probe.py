"""Do a 4k-only model's features tell sartaj's tumors from its healthy brains, whatever its head says? A linear probe
(standardised features, multinomial logistic regression, C chosen by grouped cross-validation inside the training
folds) on each MODEL's frozen pooled features of sartaj, cross-validated over sartaj's own grouped folds of
data/all-sources (each slice scored by a probe that did not see its group), against the model's own head on the same
slices; references: the same network with random weights, and the slices' pixels at 32 x 32.
PYTHONPATH=. python results/cpu-feature-probe/probe.py MODEL [MODEL ...]"""

import sys

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV, GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from transformers import AutoModelForImageClassification

from brain_resnet.data import decode_images, load_table
from brain_resnet.engine import model_input
from brain_resnet.modeling import BrainResNetImageProcessor

table = load_table("data/all-sources", "grouped", with_test=False, sources=["sartaj"])
notumor = table.class_names.index("notumor")
tumor = table.labels != notumor


def scores(probabilities: np.ndarray) -> str:
    """4-class accuracy, AUROC of P(tumor) = 1 - P(notumor), tumors called a tumor, healthy called notumor."""
    called = probabilities.argmax(1)
    auroc = roc_auc_score(tumor, 1 - probabilities[:, notumor])
    return (
        f"4-class {(called == table.labels).mean():.3f} | AUROC {auroc:.3f}"
        f" | tumors found {(called[tumor] != notumor).mean():.3f} | healthy called healthy"
        f" {(called[~tumor] == notumor).mean():.3f}"
    )


def probed(features: np.ndarray) -> np.ndarray:
    """Out-of-fold class probabilities of a linear probe, over sartaj's grouped folds."""
    probabilities = np.zeros((len(features), len(table.class_names)))
    for fold in np.unique(table.folds):
        train, test = table.folds != fold, table.folds == fold
        probe = GridSearchCV(
            make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)),
            {"logisticregression__C": [0.001, 0.01, 0.1, 1.0]},
            cv=GroupKFold(4),
            scoring="neg_log_loss",
        )
        probe.fit(features[train], table.labels[train], groups=table.groups[train])
        probabilities[test] = probe.predict_proba(features[test])
    return probabilities


def pooled_and_head(model, processor) -> tuple[np.ndarray, np.ndarray]:
    (pixels,) = decode_images(table.images, processor, [processor.size], 2)
    with torch.no_grad():
        output = model(pixel_values=model_input(pixels.float() / 255, processor), output_hidden_states=True)
    return output.hidden_states[-1].mean(dim=(2, 3)).numpy(), output.logits.softmax(1).numpy()


for run in sys.argv[1:]:
    model = AutoModelForImageClassification.from_pretrained(run, trust_remote_code=True).eval()
    processor = BrainResNetImageProcessor.from_pretrained(run)
    features, head = pooled_and_head(model, processor)
    print(f"{run} | own head | {scores(head)}")
    print(f"{run} | linear probe on its features | {scores(probed(features))}", flush=True)
torch.manual_seed(0)
random_model = type(model)(model.config).eval()
random_features, _ = pooled_and_head(random_model, processor)
print(f"random weights, {processor.size} px | linear probe | {scores(probed(random_features))}")
(pixels,) = decode_images(table.images, processor, [32], 2)
print(f"pixels, 32 px | linear probe | {scores(probed(pixels.flatten(1).float().numpy()))}")
