"""List brain-tumor-mri-sartaj's copies of brain-tumor-mri-4k slices, as the dataset's near-duplicate groups link
them (prepare_dataset.py: equal average hashes, perceptual hashes within 32 bits, or normalised thumbnails
correlated above 0.9 as they are or mirrored), with each copy's best thumbnail correlation with a 4k slice and
that slice; then a picture of the first pairs of the list given (each copy beside its 4k original).

PYTHONPATH=. python results/sartaj-copies/find_copies.py DATASET 4K_FOLDER SARTAJ_FOLDER OUT_DIR
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from brain_resnet.data import copies_of_sources
from brain_resnet.folds import _unit_thumbnails, normalised_thumbnail

dataset, four_k, sartaj, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
copies = sorted(copies_of_sources(dataset, ["figshare", "br35h"]))
originals = sorted(four_k.rglob("*.jpg"))
copy_files = [sartaj / Path(file).parent.name / Path(file).name for file in copies]
x, mirrored = _unit_thumbnails(np.stack([normalised_thumbnail(Image.open(f)) for f in originals]))
y, _ = _unit_thumbnails(np.stack([normalised_thumbnail(Image.open(f)) for f in copy_files]))
correlation = np.maximum(y @ x.T, y @ mirrored.T)
lines = [
    f"{copy}\t{originals[j].parent.name}/{originals[j].name}\t{correlation[i, j]:.4f}"
    for i, (copy, j) in enumerate(zip(copies, correlation.argmax(axis=1), strict=True))
]
(out / "copies.tsv").write_text(
    "sartaj copy\tclosest brain-tumor-mri-4k slice\tthumbnail correlation\n" + "\n".join(lines) + "\n"
)
print(
    f"{len(copies)} copies; by class:",
    {c: sum(f.split("/")[-2] == c for f in copies) for c in sorted({f.split("/")[-2] for f in copies})},
)
picture = Image.new("L", (512, 256 * 3))
for row, i in enumerate((0, len(copies) // 2, len(copies) - 1)):
    for column, file in enumerate((copy_files[i], originals[correlation[i].argmax()])):
        picture.paste(Image.open(file).convert("L").resize((256, 256)), (256 * column, 256 * row))
picture.save(out / "pairs.jpg", quality=85)
