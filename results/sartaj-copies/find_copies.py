"""List brain-tumor-mri-sartaj's copies of brain-tumor-mri-4k slices, as the dataset's near-duplicate groups link
them (prepare_dataset.py: equal average hashes, perceptual hashes within 32 bits, or normalised thumbnails
correlated above 0.9 as they are or mirrored), with each copy's best thumbnail correlation with a 4k slice, that
slice, and the 4k slices of its group; then a picture of three of the copies correlated above 0.9 (the first, one a
third of the way down the list, the last), each beside that 4k slice.

PYTHONPATH=. python results/sartaj-copies/find_copies.py DATASET 4K_FOLDER SARTAJ_FOLDER OUT_DIR
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from brain_resnet.data import copies_of_sources, read_splits
from brain_resnet.folds import _unit_thumbnails, normalised_thumbnail

dataset, four_k, sartaj, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
splits, class_names = read_splits(dataset)
train = splits["train"]
copies = sorted(copies_of_sources(train, ["figshare", "br35h"], dataset, class_names))
group_of = dict(zip(train["file"], train["group"], strict=True))
four_k_of_group = {}
for file, group in group_of.items():
    if file.startswith(f"{four_k.name}/"):
        four_k_of_group.setdefault(group, []).append(file.split("/", 1)[1])

originals = sorted(four_k.rglob("*.jpg"))
copy_files = [sartaj / Path(file).parent.name / Path(file).name for file in copies]
x, mirrored = _unit_thumbnails(np.stack([normalised_thumbnail(Image.open(f)) for f in originals]))
y, _ = _unit_thumbnails(np.stack([normalised_thumbnail(Image.open(f)) for f in copy_files]))
correlation = np.maximum(y @ x.T, y @ mirrored.T)
closest = correlation.argmax(axis=1)
lines = [
    f"{copy}\t{originals[j].parent.name}/{originals[j].name}\t{correlation[i, j]:.4f}\t"
    + " ".join(sorted(four_k_of_group[group_of[copy]]))
    for i, (copy, j) in enumerate(zip(copies, closest, strict=True))
]
header = "sartaj copy\tclosest brain-tumor-mri-4k slice\tthumbnail correlation\tbrain-tumor-mri-4k slices of its group"
(out / "copies.tsv").write_text(header + "\n" + "\n".join(lines) + "\n")
classes = [Path(file).parent.name for file in copies]
print(f"{len(copies)} copies; by class:", {name: classes.count(name) for name in sorted(set(classes))})

picture = Image.new("L", (512, 256 * 3))
close = np.flatnonzero(correlation.max(axis=1) > 0.9)
for row, i in enumerate(close[[0, len(close) // 3, -1]]):
    for column, file in enumerate((copy_files[i], originals[closest[i]])):
        picture.paste(Image.open(file).convert("L").resize((256, 256)), (256 * column, 256 * row))
picture.save(out / "pairs.jpg", quality=85)
