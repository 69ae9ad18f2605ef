"""The record's check of what --heal-prob taught (section "Healed lesions"): held-out fold 0's tumour slices too
asymmetric to mirror, marked by --heal-from's model and filled as --heal-prob fills them: how many each MODEL calls
notumor as they are and healed. PYTHONPATH=. python results/cpu-heal-ab/held_out_healed.py MODEL..."""
import sys, numpy as np, torch
from brain_resnet.augment import fill_from_surroundings
from brain_resnet.data import DeviceData, decode_images, load_table
from brain_resnet.engine import lesion_finder, model_input
from brain_resnet.modeling import BrainResNetImageProcessor
torch.set_num_threads(1)
t = load_table("data/all-sources", "grouped", False, ["figshare", "br35h"])
held = np.flatnonzero(t.folds == 0)
proc = BrainResNetImageProcessor(size=96)
(images,) = decode_images([t.images[i] for i in held], proc, [96], 1)
labels = torch.from_numpy(t.labels[held])
d = DeviceData(images, images, labels, t)
d.table = type(t)([None] * len(held), t.labels[held], t.folds[held], None, t.class_names, t.groups[held])
d.find_lesion_masks(lesion_finder("runs/ab-paste-mirror-96/fold-0", torch.device("cpu")), proc, 96)
marked = d.lesion_masks.flatten(1).any(1)
healed = fill_from_surroundings(images, d.lesion_masks)
print(f"held-out fold 0: {int(marked.sum())} of {int((labels != d.healthy_label).sum())} tumour slices marked")
for run in sys.argv[1:]:
    model = lesion_finder(run, torch.device("cpu"))
    with torch.no_grad():
        calls = [model(pixel_values=model_input(x[marked].float() / 255, proc)).logits.argmax(1) for x in (images, healed)]
    print(run, "called notumor: as they are", int((calls[0] == d.healthy_label).sum()), "healed", int((calls[1] == d.healthy_label).sum()), "of", int(marked.sum()))
