"""The picture inverted.jpg: three figshare glioma slices, three Br35H healthy ones and two sartaj healthy ones,
each beside its contrast-inverted view (train.py --invert-prob; brain_resnet.augment.invert_head_contrast).
PYTHONPATH=. python results/cpu-invert-ab/look.py"""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from brain_resnet.augment import invert_head_contrast

data = Path("../shared/data")
files = sorted((data / "brain-tumor-mri-4k/glioma").glob("*.jpg"))[:3]
files += sorted((data / "brain-tumor-mri-4k/notumor").glob("*.jpg"))[:3]
files += sorted((data / "brain-tumor-mri-sartaj/notumor").glob("*.jpg"))[:2]
pairs = []
for file in files:
    image = Image.open(file).convert("L").resize((160, 160))
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255)[None, None]
    pairs.append(np.concatenate([x[0, 0].numpy(), invert_head_contrast(x)[0, 0].numpy()], axis=1))
grid = np.concatenate([np.concatenate(pairs[:4]), np.concatenate(pairs[4:])], axis=1)
Image.fromarray((grid * 255).round().astype(np.uint8)).save(Path(__file__).with_name("inverted.jpg"), quality=85)
