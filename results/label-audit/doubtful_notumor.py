"""The slices of doubtful-notumor.txt: a contact sheet of them, and what trained models call them.

    python results/label-audit/doubtful_notumor.py [MODEL ...] [--data ../shared/data] [--sheet FILE]
        [--found-at DATASET]

For each MODEL folder (a release or a train.py fold folder), the number of listed slices it calls a tumor (any class
but notumor, the model's own call: a release's calibration and operating point are in its weights) and each
slice's P(notumor), by section of the list; for a release (a model with an unfamiliar-image threshold), how many of
the listed slices it calls notumor its warning flags. With --found-at DATASET (data/all-sources-clean), also how
many of the listed Br35H slices it finds at several shares of grouped fold 0's healthy slices called a tumor,
P(notumor) as the score: a diagnostic of the operating point, not a way to choose one (the listed slices are a test
set).
"""

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from brain_resnet.data import decode_images, load_table
from brain_resnet.engine import model_input
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


def held_out_p_notumor(model, processor, dataset: str) -> np.ndarray:
    """P(notumor) of each healthy slice of grouped fold 0 of `dataset`."""
    table = load_table(dataset, "grouped", with_test=False)
    rows = np.flatnonzero((table.folds == 0) & (table.labels == table.class_names.index("notumor")))
    (images,) = decode_images([table.images[i] for i in rows], processor, [processor.size], 2)
    with torch.no_grad():
        probs = model(pixel_values=model_input(images.float() / 255, processor)).logits.softmax(1)
    return probs[:, model.config.label2id["notumor"]].numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", type=Path, metavar="MODEL")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="folder holding the sources")
    parser.add_argument("--sheet", type=Path, help="write a contact sheet of the listed slices here (JPEG)")
    parser.add_argument("--found-at", metavar="DATASET", help="also the Br35H slices found at fold 0's false alarms")
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
        called_tumor, p_notumor, p_br35h = defaultdict(list), defaultdict(list), []
        missed_flagged = []  # for each listed slice called notumor: does the unfamiliar-image warning fire?
        for name, file in zip(listed, files, strict=True):
            with Image.open(file) as image, torch.no_grad():
                outputs = model(**processor(image, return_tensors="pt"))
            probs = outputs.logits.softmax(-1)[0]
            called_tumor[listed[name]].append(int(probs.argmax()) != notumor)
            if int(probs.argmax()) == notumor and outputs.unfamiliarity is not None:
                missed_flagged.append(bool(outputs.unfamiliarity[0] > 1))
            p_notumor[listed[name]].append(float(probs[notumor]))
            if "/br35h-" in name:
                p_br35h.append(float(probs[notumor]))
        total = sum(sum(calls) for calls in called_tumor.values())
        print(f"\n{folder}: {total} of {len(files)} called a tumor")
        for section, calls in called_tumor.items():
            values = " ".join(f"{p:.2f}" for p in p_notumor[section])
            print(f"  {sum(calls)} of {len(calls)}: {section}\n    P(notumor): {values}")
        if missed_flagged:
            print(f"  of the {len(missed_flagged)} called notumor, {sum(missed_flagged)} flagged unfamiliar")
        if args.found_at:
            p_healthy, p_br35h = held_out_p_notumor(model, processor, args.found_at), np.array(p_br35h)
            print(f"  ranked by P(notumor), against the {len(p_healthy)} healthy slices of fold 0 of {args.found_at}:")
            for alarms in (0.01, 0.05, 0.10, 0.20, 0.30):
                found = (p_br35h < np.quantile(p_healthy, alarms)).sum()  # below it: called a tumor
                print(f"    {alarms:.0%} of them called a tumor: {found} of {len(p_br35h)} listed Br35H slices found")


if __name__ == "__main__":
    main()
