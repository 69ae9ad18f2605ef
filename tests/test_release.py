"""The bundled release/ folder is a working Hub model repository and the README's Python snippet runs as written."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from brain_resnet.reports import release_markdown, render_release_section, render_summary_section

REPO = Path(__file__).resolve().parents[1]
RELEASE = REPO / "release"


def test_release_ships_the_current_remote_code():
    for source in (REPO / "modeling").glob("*_brain_resnet.py"):
        assert (RELEASE / source.name).read_text() == source.read_text(), f"release/{source.name} is stale"


def test_release_is_a_hub_model_repository():
    names = {path.name for path in RELEASE.iterdir()}
    assert {"config.json", "preprocessor_config.json", "README.md"} <= names
    weights = sorted(RELEASE.glob("*.safetensors"))
    assert weights and not list(RELEASE.glob("*.bin"))
    assert sum(path.stat().st_size for path in weights) <= 40 * 2**20
    card = (RELEASE / "README.md").read_text()
    assert card.startswith("---\n") and "pipeline_tag: image-classification" in card


def test_release_card_holds_the_numbers_of_its_report():
    card = (RELEASE / "README.md").read_text()
    report = json.loads((REPO / "results/release.json").read_text())  # what make_release.py measured
    assert render_release_section(card, report) == card, "release/README.md disagrees with results/release.json"


def test_release_card_tells_the_operating_point_asked_for_from_the_share_measured():
    report = json.loads((REPO / "results/release.json").read_text())
    report["operating_point"] |= {"healthy_false_alarms": 0.05, "held_out_healthy_called_tumor": 0.031}
    assert "so that at most 5% of them are called a tumor (3.1% are)" in release_markdown(report)


def python_blocks_of_section(markdown: str, heading: str) -> list[str]:
    section = markdown.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_python_snippet_runs_offline_as_written():
    (snippet,) = python_blocks_of_section((REPO / "README.md").read_text(), "Loading from Python")
    check = snippet + (
        "\nresult = classifier('space/examples/figshare-0209.jpg')\n"
        "assert sorted(r['label'] for r in result) == ['glioma', 'meningioma', 'notumor', 'pituitary']\n"
        "assert next(model.parameters()).dtype.is_floating_point and model.dtype == __import__('torch').float32\n"
        "print('ok')\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", check], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


def test_release_card_holds_the_cross_validation_table_of_its_summary():
    """The card's cross-validation section is `evaluation.py summary`'s table as results/summary.json holds it:
    each variant's own accuracy ± std, flip rate and other-source scores (less that source's copies of the runs'
    own slices, counted beside its name), in their columns."""
    card = (RELEASE / "README.md").read_text()
    report = json.loads((REPO / "results/release.json").read_text())
    summary = json.loads((REPO / report["summary"]).read_text())
    assert render_summary_section(card, summary, report["summary"]) == card, "release/README.md disagrees with it"
    entry = summary["protocols"]["grouped"]["improved"]
    (data, scores), *_ = entry["cross_source"].items()
    row = (
        f"| grouped | improved | {entry['folds']} | {entry['accuracy_mean']:.4f} ± {entry['accuracy_std']:.4f} "
        f"| {entry['macro_f1_mean']:.4f} | {entry['params'] / 1e6:.1f} M | {entry['shortcut_flip_rate']:.4f} "
        f"| {data} ({scores['copies_left_out']} copies left out) | {scores['accuracy']:.4f} "
        f"| {scores['tumor_found']:.4f} | {scores['notumor_specificity']:.4f} |"
    )
    assert row in card
