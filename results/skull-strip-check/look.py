"""A look, before any training, at whether a classical skull strip could serve as a preprocessing step: threshold
at the processor's foreground threshold, erode to cut the skull's bridges to the brain, keep what is connected to
the centre, dilate back and fill holes. Writes a contact sheet (each slice as the processor scales it, then
stripped) of 28 slices drawn from every class folder of both datasets:

    PYTHONPATH=. python results/skull-strip-check/look.py ../shared/data /tmp/skull-strip-sheet.png
"""

import random
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from brain_resnet.modeling import BrainResNetImageProcessor

FOLDERS = {
    "brain-tumor-mri-4k/glioma": 4,
    "brain-tumor-mri-4k/meningioma": 4,
    "brain-tumor-mri-4k/pituitary": 4,
    "brain-tumor-mri-4k/notumor": 6,
    "brain-tumor-mri-sartaj/notumor": 6,
    "brain-tumor-mri-sartaj/glioma": 4,
}


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    return F.max_pool2d(mask[None, None].float(), 2 * radius + 1, stride=1, padding=radius)[0, 0] > 0


def reconstruct(seeds: torch.Tensor, within: torch.Tensor) -> torch.Tensor:
    """The parts of `within` connected to `seeds`."""
    grown = seeds & within
    while not torch.equal(step := dilate(grown, 1) & within, grown):  # 8-connected
        grown = step
    return grown


def brain_mask(image: torch.Tensor, threshold: float, radius_share: float = 0.025) -> torch.Tensor:
    height, width = image.shape
    foreground = image > threshold
    radius = max(1, round(radius_share * min(height, width)))
    core = ~dilate(~foreground, radius)  # eroded
    centre = torch.zeros_like(core)
    centre[height * 3 // 8 : height * 5 // 8, width * 3 // 8 : width * 5 // 8] = True
    if not (core & centre).any():
        return torch.ones_like(foreground)
    brain = dilate(reconstruct(core & centre, core), radius) & foreground
    border = torch.zeros_like(brain)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    return ~reconstruct(border & ~brain, ~brain)  # holes filled


root, output = Path(sys.argv[1]), sys.argv[2]
processor, rng, side, columns = BrainResNetImageProcessor(), random.Random(0), 110, 7
files = [file for folder, n in FOLDERS.items() for file in rng.sample(sorted((root / folder).glob("*.jpg")), n)]
sheet = Image.new("L", (columns * 2 * side, -(-len(files) // columns) * side))
for k, file in enumerate(files):
    scaled = processor.scale_intensity(processor.to_grayscale(Image.open(file)))
    for j, shown in enumerate([scaled, scaled * brain_mask(scaled, processor.foreground_threshold)]):
        tile = Image.fromarray((shown * 255).byte().numpy()).resize((side, side))
        sheet.paste(tile, (((k % columns) * 2 + j) * side, (k // columns) * side))
sheet.save(output)
print(f"{output}: {len(files)} slices, each scaled then stripped")
