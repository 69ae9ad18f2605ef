"""Near-duplicate groups and the two cross-validation fold protocols, shared by prepare_dataset.py (which writes
the fold columns) and train.py (which reads them, or makes them for a dataset without them); and the lists of
files that prepare_dataset.py --exclude leaves out.

Importing this module loads only numpy; imagehash, scikit-learn and scipy load in the functions that use them.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

# train.py's --protocol -> the dataset column holding its folds: `grouped` keeps near-duplicates in one fold,
# `random` is the plain stratified folds of the paper.
FOLD_COLUMNS = {"grouped": "fold", "random": "fold_random"}
# train.py's --protocol -> the name evaluation.py's summary gives it ("stratified": the paper's protocol).
PROTOCOL_NAMES = {"random": "stratified", "grouped": "grouped"}
NO_FOLD = -1  # the fold of test-split images, which take no part in cross-validation
SHARE_TOLERANCE = 1.5  # points a class's share in a fold may differ from its share overall
HASH_SIZE = 16  # 16x16 = 256-bit hashes
# Perceptual-hash bits two slices may differ in and still be one near-duplicate group. Measured on
# brain-tumor-mri-4k: the first link between two classes (so between two patients) appears at 36 and
# clusters stay small (largest 33 images); 32 keeps a margin and still joins the re-saved copies of
# one Br35H slice that differ in size and contrast.
PHASH_MAX_DISTANCE = 32
THUMBNAIL_SIZE = 32  # normalised_thumbnail's side
CROP_BRIGHTNESS = 0.1  # a thumbnail is cropped to the pixels brighter than this share of the brightest
# Thumbnail correlation (as they are or mirrored) above which two slices are one near-duplicate group: the bar
# brain-tumor-mri-sartaj was filtered at, so copies of a 4k slice above it were left out of that set.
MIN_THUMBNAIL_CORRELATION = 0.90
# Thumbnail correlation above which consecutively numbered slices of one class are adjacent slices of one
# patient. Measured on brain-tumor-mri-4k: consecutive figshare slices of one class correlate 0.79 (median), slices
# of two classes (two patients) 0.37, with 1% above 0.63; 0.6 joins most neighbours and few patient boundaries.
MIN_NEIGHBOUR_CORRELATION = 0.6
# Perceptual-hash bits within which consecutively numbered slices of one class are adjacent slices of one patient:
# about half of such pairs, and 0.009% of slice pairs of two classes (measured on brain-tumor-mri-4k).
MAX_NEIGHBOUR_PHASH_DISTANCE = 56


def image_hashes(image: Image.Image, hash_size: int = HASH_SIZE) -> np.ndarray:
    """Average hash and DCT perceptual hash of ``image``, packed: uint8 array (2, hash_size**2 // 8)."""
    import imagehash

    bits = np.stack([imagehash.average_hash(image, hash_size).hash, imagehash.phash(image, hash_size).hash])
    return np.packbits(bits.reshape(2, -1), axis=1)


def normalised_thumbnail(image: Image.Image, size: int = THUMBNAIL_SIZE) -> np.ndarray:
    """The slice cropped to its bright part, shrunk to size x size and histogram-equalised: uint8 (size, size).

    Cropping undoes different framing and equalising undoes a different intensity mapping (window, gamma,
    contrast), so copies of one slice from different sources give nearly the same thumbnail.
    """
    from PIL import Image

    gray = image.convert("L")
    pixels = np.asarray(gray)
    rows, cols = np.nonzero(pixels > pixels.max() * CROP_BRIGHTNESS)
    if len(rows):
        gray = gray.crop((cols.min(), rows.min(), cols.max() + 1, rows.max() + 1))
    small = np.asarray(gray.resize((size, size), Image.Resampling.BOX))
    cumulative = np.cumsum(np.bincount(small.ravel(), minlength=256))
    return np.round(255 * cumulative[small] / cumulative[-1]).astype(np.uint8)


def correlated_pairs(
    thumbnails: Sequence[np.ndarray] | np.ndarray, min_correlation: float = MIN_THUMBNAIL_CORRELATION, block: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) of ``normalised_thumbnail`` results correlated above ``min_correlation``, either as
    they are or with one mirrored left-right (a flipped copy)."""
    x, mirrored = _unit_thumbnails(thumbnails)
    found_i, found_j = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    for start in range(0, len(x), block):
        # Pearson correlation = dot product of centred unit vectors; one block of rows against itself and every
        # later row (the upper triangle), in bounded memory.
        rows = slice(start, start + block)
        correlation = np.maximum(x[rows] @ x[start:].T, x[rows] @ mirrored[start:].T)
        i, j = np.nonzero(correlation > min_correlation)
        keep = i < j
        found_i.append(i[keep] + start)
        found_j.append(j[keep] + start)
    return np.concatenate(found_i), np.concatenate(found_j)


def numbered_neighbour_pairs(
    numbers: Sequence[tuple[Hashable, int] | None],
    hashes: Sequence[np.ndarray] | np.ndarray,
    thumbnails: Sequence[np.ndarray] | np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs of images numbered n and n + 1 in one series that look alike by a looser bar than other pairs.

    ``numbers[i]`` is (series, n), or None for an unnumbered image; ``hashes`` and ``thumbnails`` hold their
    ``image_hashes`` and ``normalised_thumbnail``. Where a source numbers each patient's slices in a row, such
    pairs are adjacent slices of one patient, too different for the other links. Linked: thumbnails correlated
    above MIN_NEIGHBOUR_CORRELATION, or perceptual hashes at most MAX_NEIGHBOUR_PHASH_DISTANCE bits apart.
    """
    index = {number: i for i, number in enumerate(numbers) if number is not None}
    pairs = [(i, index[(series, n + 1)]) for (series, n), i in index.items() if (series, n + 1) in index]
    rows, cols = np.array([i for i, _ in pairs], np.int64), np.array([j for _, j in pairs], np.int64)
    x, mirrored = _unit_thumbnails(thumbnails)
    correlation = np.maximum(np.sum(x[rows] * x[cols], axis=1), np.sum(x[rows] * mirrored[cols], axis=1))
    phash = np.asarray(hashes, dtype=np.uint8)[:, 1]
    distance = np.unpackbits(phash[rows] ^ phash[cols], axis=1).sum(axis=1)
    keep = (correlation > MIN_NEIGHBOUR_CORRELATION) | (distance <= MAX_NEIGHBOUR_PHASH_DISTANCE)
    return rows[keep], cols[keep]


def _unit_thumbnails(thumbnails: Sequence[np.ndarray] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Thumbnails as centred unit rows (float32), as they are and mirrored left-right."""
    thumbnails = np.asarray(thumbnails, dtype=np.float32).reshape(len(thumbnails), THUMBNAIL_SIZE, THUMBNAIL_SIZE)
    return _unit_rows(thumbnails), _unit_rows(thumbnails[:, :, ::-1])


def _unit_rows(images: np.ndarray) -> np.ndarray:
    x = images.reshape(len(images), -1)
    centred = x - x.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    return centred / np.where(norms > 0, norms, 1)


def near_duplicate_groups(
    hashes: Sequence[np.ndarray] | np.ndarray,
    max_phash_distance: int = PHASH_MAX_DISTANCE,
    more_links: Sequence[tuple[np.ndarray, np.ndarray]] = (),
) -> list[int]:
    """Near-duplicate group id of each image: 0, 1, ... in order of first appearance.

    ``hashes`` holds one ``image_hashes`` result per image. Two images are linked when their average
    hashes are identical or their perceptual hashes differ in at most ``max_phash_distance`` bits, so
    byte-identical files always share a group; ``more_links`` adds (rows, cols) index pairs found other
    ways (``correlated_pairs``, ``numbered_neighbour_pairs``). Groups are the connected components of these
    links: a group may chain images that are not all pairwise close.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    hashes = np.asarray(hashes, dtype=np.uint8)
    n = len(hashes)
    if n == 0:
        return []
    equal_rows, equal_cols = _equal_pairs([h.tobytes() for h in hashes[:, 0]])
    close_rows, close_cols = _close_pairs(hashes[:, 1], max_phash_distance)
    rows = np.concatenate([equal_rows, close_rows, *(r for r, _ in more_links)])
    cols = np.concatenate([equal_cols, close_cols, *(c for _, c in more_links)])
    graph = coo_matrix((np.ones(len(rows), dtype=bool), (rows, cols)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    first_seen: dict[int, int] = {}
    return [first_seen.setdefault(c, len(first_seen)) for c in component.tolist()]


def _equal_pairs(keys: Sequence[Hashable]) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (first index with this key, later index) for every repeated key."""
    first: dict[Hashable, int] = {}
    pairs = [(first.setdefault(key, j), j) for j, key in enumerate(keys)]
    pairs = [(i, j) for i, j in pairs if i != j]
    return np.array([i for i, _ in pairs], dtype=np.int64), np.array([j for _, j in pairs], dtype=np.int64)


def _close_pairs(bits: np.ndarray, max_distance: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) of packed bit rows that differ in at most ``max_distance`` bits."""
    x = np.unpackbits(bits, axis=1).astype(np.float32)
    ones = x.sum(axis=1)
    found_i, found_j = [], []
    for start in range(0, len(x), block):
        # Hamming distance = ones(a) + ones(b) - 2 a.b, one matrix product per block of rows against
        # itself and every later row (the upper triangle), in bounded memory; exact in float32.
        rows = slice(start, start + block)
        distance = ones[rows, None] + ones[None, start:] - 2 * (x[rows] @ x[start:].T)
        i, j = np.nonzero(distance <= max_distance)
        keep = i < j
        found_i.append(i[keep] + start)
        found_j.append(j[keep] + start)
    return np.concatenate(found_i), np.concatenate(found_j)


def check_hash(image: Image.Image, hash_size: int = HASH_SIZE) -> bytes:
    """A hash_size x hash_size average hash of a bilinear shrink, to measure the grouping by.

    imagehash's average hash (a Lanczos shrink) is one of the grouping's links, so it cannot check the grouping;
    this one, from another shrink, finds partly different look-alikes.
    """
    from PIL import Image

    pixels = np.asarray(image.convert("L").resize((hash_size, hash_size), Image.Resampling.BILINEAR), dtype=np.float64)
    return np.packbits(pixels > pixels.mean()).tobytes()


def split_look_alikes(keys: Sequence[Hashable], fold: Sequence[int]) -> tuple[list[list[int]], int]:
    """Among the sets of 2+ images with one key (``check_hash``): those whose images fall in different folds, as
    lists of positions, and how many sets there are."""
    members: dict[Hashable, list[int]] = {}
    for i, key in enumerate(keys):
        members.setdefault(key, []).append(i)
    sets = [positions for positions in members.values() if len(positions) > 1]
    fold = np.asarray(fold)
    return [positions for positions in sets if len(set(fold[positions].tolist())) > 1], len(sets)


def assign_folds(
    labels: Sequence[Hashable], groups: Sequence[int], n_folds: int = 5, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Cross-validation fold (0..n_folds-1) of each example under two protocols, same for the same seed.

    Returns ``(fold, fold_random)``: ``fold`` from scikit-learn's StratifiedGroupKFold (class shares
    kept, no group split across folds: leak-free); ``fold_random`` from StratifiedKFold, the plain
    stratified folds most papers use, where near-duplicates may land in different folds.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    y = np.asarray(labels)
    x = np.zeros(len(y))
    grouped = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(x, y, groups)
    plain = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(x, y)
    return _fold_of_each(grouped, len(y)), _fold_of_each(plain, len(y))


def _fold_of_each(splits: Iterable[tuple[np.ndarray, np.ndarray]], n: int) -> list[int]:
    fold = np.full(n, NO_FOLD)
    for k, (_, held_out) in enumerate(splits):
        fold[held_out] = k
    return fold.tolist()


def class_share_deviation(labels: Sequence[Hashable], folds: Sequence[int]) -> float:
    """Largest gap, in percentage points, between a class's share in a fold and its share overall."""
    labels, folds = np.asarray(labels), np.asarray(folds)
    classes = np.unique(labels)
    overall = np.array([np.mean(labels == c) for c in classes])
    return max(
        100 * np.abs(np.array([np.mean(labels[folds == k] == c) for c in classes]) - overall).max()
        for k in np.unique(folds)
    )


def read_exclusions(path: Path) -> dict[str, str]:
    """The files an --exclude list names, each with its reason: the line's own ``# comment``, else the last
    comment line above it (a heading for the lines below)."""
    listed, heading = {}, ""
    for line in path.read_text(encoding="utf-8").splitlines():
        name, _, comment = line.partition("#")
        name, comment = name.strip(), comment.strip()
        if not name:
            heading = comment or heading
            continue
        listed[name] = comment or heading
    return listed
