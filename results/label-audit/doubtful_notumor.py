"""The slices of doubtful-notumor.txt: a contact sheet of them, and what trained models call them.

    python results/label-audit/doubtful_notumor.py [MODEL ...] [--data ../shared/data] [--sheet FILE]

For each MODEL folder (a release or a train.py fold folder), the number of listed slices it calls a tumor (any class
but notumor, the model's own call: a release's calibration and operating point are in its weights) and each
slice's P(notumor), by section of the list.
"""

import argparse
from collections import defaultdict
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from brain_resnet.folds import read_exclusions
from brain_resnet.modeling import BrainResNetForImageClassification, BrainResNetImageProcessor

LIST = Path(__file__).with_name("doubtful-notumor.txt")


def contact_sheet(files: list[Path], out: Path, tile: int = 112, columns: int = 12) -> None:
    rows = -(-len(files) // columns)
    sheet = Image.new("L", (columns * tile, rows * tile))
    draw = ImageDraw.Draw(sheet)
    for i, file in enumerate(files):
        with Image.open(file) as image:
            thumbnail = image.convert("L")
        thumbnail.thumbnail((tile, tile))
        x, y = i % columns * tile, i // columns * tile
        sheet.paste(thumbnail, (x, y))
        draw.text((x + 2, y + 1), file.stem.split("-", 1)[1], fill=255)
    sheet.save(out, quality=85)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", type=Path, metavar="MODEL")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="folder holding the sources")
    parser.add_argument("--sheet", type=Path, help="write a contact sheet of the listed slices here (JPEG)")
    args = parser.parse_args()
    listed = read_exclusions(LIST)
    files = [args.data / name for name in listed]
    print(f"{len(files)} slices listed in {LIST.name}")
    if args.sheet:
        contact_sheet(files, args.sheet)
    for folder in args.models:
        model = BrainResNetForImageClassification.from_pretrained(folder).eval()
        processor = BrainResNetImageProcessor.from_pretrained(folder)
        notumor = model.config.label2id["notumor"]
        called_tumor, p_notumor = defaultdict(list), defaultdict(list)
        for name, file in zip(listed, files, strict=True):
            with Image.open(file) as image, torch.no_grad():
                probs = model(**processor(image, return_tensors="pt")).logits.softmax(-1)[0]
            called_tumor[listed[name]].append(int(probs.argmax()) != notumor)
            p_notumor[listed[name]].append(float(probs[notumor]))
        total = sum(sum(calls) for calls in called_tumor.values())
        print(f"\n{folder}: {total} of {len(files)} called a tumor")
        for section, calls in called_tumor.items():
            values = " ".join(f"{p:.2f}" for p in p_notumor[section])
            print(f"  {sum(calls)} of {len(calls)}: {section}\n    P(notumor): {values}")


if __name__ == "__main__":
    main()
