"""The record's picture of --heal-from's lesion masks (section "Healed lesions"): 30 tumour slices drawn at random
among those marked, the mask's outline in red, as train.py --heal-prob 0.3 --heal-from runs/ab-paste-mirror-96/fold-0
marks them at 96 px: PYTHONPATH=. python results/cpu-heal-ab/lesion_masks.py"""

import numpy as np, torch
from PIL import Image
from brain_resnet.data import DeviceData, decode_images, load_table, CACHE_MARGIN
from brain_resnet.engine import lesion_finder
from brain_resnet.modeling import BrainResNetImageProcessor
torch.set_num_threads(1)
t = load_table("data/all-sources", "grouped", False, ["figshare", "br35h"])
proc = BrainResNetImageProcessor(size=96)
tr, ev = decode_images(t.images, proc, [round(96 * CACHE_MARGIN), 96], 1)
d = DeviceData(tr, ev, torch.from_numpy(t.labels), t)
d.find_lesion_masks(lesion_finder("runs/ab-paste-mirror-96/fold-0", torch.device("cpu")), proc, 96)
marked = d.lesion_masks.flatten(1).any(1)
print("marked", int(marked.sum()), "of", int((d.labels != d.healthy_label).sum()), "tumour rows; by class",
      [int((marked & (d.labels == c)).sum()) for c in range(4)], t.class_names)
g = torch.Generator().manual_seed(1)
rows = torch.nonzero(marked).flatten()
rows = rows[torch.randperm(len(rows), generator=g)[:30]]
tiles = []
for r in rows.tolist():
    img = d.train_images[r, 0].numpy()
    m = d.lesion_masks[r, 0].numpy()
    edge = m & ~np.pad(m, 1)[2:, 1:-1] | m & ~np.pad(m, 1)[:-2, 1:-1] | m & ~np.pad(m, 1)[1:-1, 2:] | m & ~np.pad(m, 1)[1:-1, :-2]
    rgb = np.stack([img] * 3, -1); rgb[edge] = [255, 0, 0]
    tiles.append(np.kron(rgb, np.ones((2, 2, 1), dtype=np.uint8)))
grid = np.concatenate([np.concatenate(tiles[j:j + 6], 1) for j in range(0, 30, 6)], 0)
Image.fromarray(grid).save("results/cpu-heal-ab/lesion-masks.jpg", quality=85)
