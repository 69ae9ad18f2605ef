"""The Space's page in a real browser: Debian's chromium driven by Playwright (no browser download).

Needs /usr/bin/chromium (`apt-get install chromium`; `make test` installs it).
"""

import base64
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright
from test_space import EXAMPLES, LABELS, app, colour_photo, launch_space, save_random_model, stop

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
UPLOAD_INPUT = "#slice-upload input[type=file]"
CAM_IMAGE = "#grad-cam img"
ANSWER_TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def space_url(tmp_path_factory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("space")
    process, url = launch_space(save_random_model(folder / "model"), folder / "server.log")
    yield url
    stop(process)


@pytest.fixture(scope="module")
def browser():
    assert CHROMIUM.exists(), "Debian's chromium is missing: apt-get install chromium (make test does)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_space(browser, space_url: str, width: int, height: int) -> Page:
    """A new page of the Space at this viewport, its upload control ready."""
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(space_url)
    page.wait_for_selector(UPLOAD_INPUT, state="attached")
    return page


@pytest.fixture
def page(browser, space_url) -> Iterator[Page]:
    page = open_space(browser, space_url, 1400, 1100)
    yield page
    page.close()


def wait_for_rendered_cam(page: Page, previous_src: str | None = None) -> str:
    """Wait until the Grad-CAM image is decoded and drawn (and differs from `previous_src`); returns its src."""
    page.wait_for_function(
        """([selector, previous]) => {
            const image = document.querySelector(selector);
            return image && image.complete && image.naturalWidth === 224 && image.src !== previous;
        }""",
        arg=[CAM_IMAGE, previous_src],
        timeout=ANSWER_TIMEOUT_MS,
    )
    return page.get_attribute(CAM_IMAGE, "src")


def expect_four_probabilities(page: Page) -> None:
    for label in LABELS:
        expect(page.get_by_test_id(f"{label}-confidence-set")).to_be_visible(timeout=ANSWER_TIMEOUT_MS)


def gallery_spare_height(page: Page, gallery: str) -> float:
    """Pixels of a gallery's map area below its thumbnails' single row."""
    return page.evaluate(
        """(gallery) => {
            const area = document.querySelector(`${gallery} .grid-wrap`).getBoundingClientRect();
            const row = document.querySelector(`${gallery} .thumbnail-item`).getBoundingClientRect();
            return area.bottom - row.bottom;
        }""",
        gallery,
    )


def test_uploaded_example_shows_label_and_grad_cam(page, tmp_path):
    expect(page.locator("#model-status")).to_contain_text("UNTRAINED MODEL")
    expect(page.get_by_text("not a medical device")).to_be_visible()

    page.set_input_files(UPLOAD_INPUT, str(EXAMPLES[0]))

    expect_four_probabilities(page)
    expect(page.locator("#verdict")).to_contain_text(re.compile("familiar image", re.IGNORECASE))
    predicted_cam = wait_for_rendered_cam(page)
    page.get_by_role("radio", name=LABELS[0]).check()
    glioma_cam = wait_for_rendered_cam(page, previous_src=predicted_cam)  # another class's map replaces it
    page.screenshot(path=tmp_path / "space.png", full_page=True)
    assert (tmp_path / "space.png").stat().st_size > 50_000
    for gallery in ("#stage-maps", "#stem-maps"):  # one row of maps, no blank band under it
        assert gallery_spare_height(page, gallery) < 40, gallery

    # A new slice shows its predicted class's map again, and the class control says so.
    page.locator('#slice-upload button[aria-label="Clear"]').click()
    page.set_input_files(UPLOAD_INPUT, str(EXAMPLES[2]))
    wait_for_rendered_cam(page, previous_src=glioma_cam)
    expect(page.get_by_role("radio", name="predicted class")).to_be_checked()


def test_a_phone_sees_every_map(browser, space_url):
    """On a phone-wide screen no map is cut off at the edge, and the SE plot sits above the stem maps."""
    phone = open_space(browser, space_url, 420, 900)
    phone.set_input_files(UPLOAD_INPUT, str(EXAMPLES[0]))
    wait_for_rendered_cam(phone)
    layout = phone.evaluate(
        """() => {
            const box = (element) => element.getBoundingClientRect();
            const right = (gallery) => box(document.querySelector(`${gallery} .grid-wrap`)).right;
            const thumbnails = (gallery) =>
                [...document.querySelectorAll(`${gallery} .thumbnail-item`)].map((item) => box(item).right);
            return {
                stage: { edge: right("#stage-maps"), thumbnails: thumbnails("#stage-maps") },
                stem: { edge: right("#stem-maps"), thumbnails: thumbnails("#stem-maps") },
                seBottom: box(document.querySelector("#se-weights")).bottom,
                stemTop: box(document.querySelector("#stem-maps")).top,
            };
        }"""
    )
    phone.close()
    for gallery in ("stage", "stem"):
        assert layout[gallery]["thumbnails"], gallery
        assert max(layout[gallery]["thumbnails"]) <= layout[gallery]["edge"] + 1, layout[gallery]
    assert layout["seBottom"] <= layout["stemTop"], layout


def test_pasted_image_and_example_click_are_analysed(page):
    image = base64.b64encode(EXAMPLES[1].read_bytes()).decode()
    page.evaluate(
        """(image) => {
            const bytes = Uint8Array.from(atob(image), (c) => c.charCodeAt(0));
            const clipboard = new DataTransfer();
            clipboard.items.add(new File([bytes], "pasted.jpg", { type: "image/jpeg" }));
            document.dispatchEvent(new ClipboardEvent("paste", { clipboardData: clipboard, bubbles: true }));
        }""",
        image,
    )
    expect(page.locator("#slice-upload")).to_contain_text("pasted", timeout=ANSWER_TIMEOUT_MS)
    pasted_cam = wait_for_rendered_cam(page)
    expect_four_probabilities(page)

    example = EXAMPLES[-1].name
    page.get_by_role("button", name=example).click()
    expect(page.locator("#slice-upload")).to_contain_text(example.split(".")[0], timeout=ANSWER_TIMEOUT_MS)
    wait_for_rendered_cam(page, previous_src=pasted_cam)


def write_non_image(path: Path) -> None:
    path.write_bytes(b"this is not a PNG")


def write_oversized(path: Path) -> None:
    with path.open("wb") as file:
        file.truncate(app.MAX_UPLOAD_BYTES + 1)


@pytest.mark.parametrize(
    ("write_file", "message"),
    [
        (write_non_image, "This file is not an image the Space can read"),
        (write_oversized, "exceed the maximum allowed size of 20.0 Mb"),
    ],
)
def test_bad_upload_shows_its_message_on_the_page(page, tmp_path, write_file, message):
    bad = tmp_path / "scan.png"
    write_file(bad)

    page.set_input_files(UPLOAD_INPUT, str(bad))

    expect(page.get_by_text(message)).to_be_visible(timeout=ANSWER_TIMEOUT_MS)
    expect(page.locator(CAM_IMAGE)).to_have_count(0)


def test_a_failed_upload_says_so_until_the_next_slice_is_analysed(page, tmp_path):
    """The error stays (a visitor who looked away still finds why), the page says the file was not analysed, and
    the next slice's analysis closes it."""
    bad = tmp_path / "scan.jpg"
    write_non_image(bad)
    page.set_input_files(UPLOAD_INPUT, str(bad))
    error = page.get_by_test_id("toast-body").filter(has_text="This file is not an image the Space can read")
    expect(error).to_be_visible(timeout=ANSWER_TIMEOUT_MS)
    expect(page.locator("#verdict")).to_contain_text("This file could not be analysed")

    page.locator('#slice-upload button[aria-label="Clear"]').click()
    page.set_input_files(UPLOAD_INPUT, str(EXAMPLES[0]))
    wait_for_rendered_cam(page)
    expect(error).to_have_count(0)
    expect(page.locator("#verdict")).not_to_contain_text("could not be analysed")
    expect(page.locator("#grad-cam")).to_contain_text("Grad-CAM: ")


def test_colour_photo_is_answered_with_visible_colour_and_unfamiliar_warnings(page, tmp_path):
    page.set_input_files(UPLOAD_INPUT, str(colour_photo(tmp_path / "holiday.png")))

    toasts = page.get_by_test_id("toast-body")  # the warnings pop up, and the assessment lists them too
    for warning in ("This image is in colour, but MRI slices are grayscale", "This slice is unlike the slices"):
        expect(toasts.filter(has_text=warning)).to_be_visible(timeout=ANSWER_TIMEOUT_MS)
        expect(page.locator("#assessment").get_by_text(warning)).to_be_visible()
        expect(page.locator("#verdict")).to_contain_text(warning)  # and stays on the page, in words
    expect_four_probabilities(page)
