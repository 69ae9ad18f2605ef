"""What released MODEL folders call the Space's example slices as a DICOM viewer's screenshot shows them: the slice
on a black screen with burned-in text in two corners, an orientation letter and a scale bar.

PYTHONPATH=. python results/crop-pieces/screenshots.py MODEL [MODEL ...]
"""

import sys
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from transformers import AutoModelForImageClassification

from brain_resnet.modeling import BrainResNetImageProcessor

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "space" / "examples").glob("*.jpg"))


def screenshot(path: Path) -> Image.Image:
    with Image.open(path) as image:
        slice_ = image.convert("L")
    width, height = slice_.size
    screen = Image.new("L", (width + 120, height + 120))
    screen.paste(slice_, (60, 60))
    draw = ImageDraw.Draw(screen)
    draw.text((5, 5), "PATIENT 12345  SE:3 IM:17", fill=255)
    draw.text((5, screen.height - 15), "TR 500 TE 15  W:1200 L:600", fill=255)
    draw.text((screen.width - 30, 5), "R", fill=255)
    draw.line([(screen.width - 20, 30), (screen.width - 20, 130)], fill=255, width=2)
    return screen


for folder in sys.argv[1:]:
    model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
    processor = BrainResNetImageProcessor.from_pretrained(folder)
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    kept = 0
    print(f"{folder} (foreground_min_piece_share {processor.foreground_min_piece_share}):")
    for path in EXAMPLES:
        calls = []
        for image in (Image.open(path), screenshot(path)):
            with torch.no_grad():
                outputs = model(**processor(image, return_tensors="pt"))
            probs = outputs.logits.softmax(-1)[0]
            calls.append((names[int(probs.argmax())], float(probs.max()), float(outputs.unfamiliarity[0])))
        kept += calls[0][0] == calls[1][0]
        (plain, p, u), (shot, q, v) = calls
        print(f"    {path.name}: as is {plain} {p:.3f} (unfamiliarity {u:.2f}); screenshot {shot} {q:.3f} ({v:.2f})")
    print(f"    the screenshot keeps the call of {kept} of {len(EXAMPLES)}")
