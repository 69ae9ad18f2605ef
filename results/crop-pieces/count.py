"""How many slices of the given class folders (one subfolder per class) the pieces rule preprocesses differently:
their brain crop box, and their intensity scale (the foreground's percentile that maps to 1).

PYTHONPATH=. python results/crop-pieces/count.py FOLDER [FOLDER ...]
"""

import sys
from collections import Counter
from pathlib import Path

from PIL import Image

from modeling import BrainResNetImageProcessor
from modeling.image_processing_brain_resnet import _foreground_box

processors = {"before": BrainResNetImageProcessor(foreground_min_piece_share=0.0), "now": BrainResNetImageProcessor()}
files = sorted(file for folder in sys.argv[1:] for file in Path(folder).glob("*/*.jpg"))
moved, far, rescaled = Counter(), Counter(), Counter()
for file in files:
    with Image.open(file) as image:
        gray = processors["now"].to_grayscale(image)
    scaled = {name: processor.scale_intensity(gray) for name, processor in processors.items()}
    boxes = [
        _foreground_box(scaled[name], p.foreground_threshold, p.crop_margin, p.foreground_min_piece_share)
        for name, p in processors.items()
    ]
    cell = f"{file.parents[1].name}/{file.parent.name}"
    moved[cell] += boxes[0] != boxes[1]
    far[cell] += max(abs(a - b) for a, b in zip(*boxes, strict=True)) > 4
    rescaled[cell] += bool((scaled["before"] - scaled["now"]).abs().max() > 1e-6)
print(
    f"{len(files)} slices: crop box moved {sum(moved.values())} (by more than 4 px {sum(far.values())}), "
    f"intensity scale changed {sum(rescaled.values())}"
)
for cell in sorted(moved):
    print(f"    {cell}: box moved {moved[cell]} (more than 4 px {far[cell]}), intensity scale changed {rescaled[cell]}")
