"""The picture pasted.jpg: Br35H healthy slices at 96 px as train.py caches them, each beside the lesion of a figshare
glioma or meningioma slice pasted on it bright (--paste-prob) and dark (--dark-lesion-prob): one donor per row.
PYTHONPATH=. python results/cpu-dark-lesion-ab/look.py"""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from brain_resnet.augment import lesion_maps, tumour_sides
from brain_resnet.data import decode_images, load_table
from brain_resnet.modeling import BrainResNetImageProcessor

table = load_table("data/all-sources", "grouped", with_test=False, sources=["figshare", "br35h"])
names = table.class_names
rng = np.random.default_rng(0)
healthy = rng.choice(np.flatnonzero(table.labels == names.index("notumor")), 6, replace=False)
lateral = np.flatnonzero(np.isin(table.labels, [names.index("glioma"), names.index("meningioma")]))
donors = rng.choice(lateral, 120, replace=False)
processor = BrainResNetImageProcessor()
(images,) = decode_images([table.images[i] for i in [*healthy, *donors]], processor, [96], 2)
lesions, area = lesion_maps(images[6:], tumour_sides(images[6:]))
with_lesion = torch.nonzero(area >= 0.01).flatten()[:6]
rows = []
for host, donor in zip(images[:6].float(), with_lesion, strict=True):
    lesion = lesions[donor]
    views = [host, images[6:][donor].float(), host + lesion, host - lesion]
    rows.append(np.concatenate([v.clamp(0, 255)[0].numpy() for v in views], axis=1))
grid = np.concatenate(rows).round().astype(np.uint8)
Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2)).save(
    Path(__file__).with_name("pasted.jpg"), quality=85
)
