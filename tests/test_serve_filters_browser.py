"""`vsa serve`'s page in a real browser (as test_serve_browser.py): the metadata filters on a search and
the near-duplicates page, against an index of photos with EXIF written by the test and a copy set."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_serve_browser import CHROMIUM, running, settled, sync_playwright  # noqa: F401  (skips without a browser)

if CHROMIUM is None or sync_playwright is None:
    pytest.skip("browser tests need Chromium and the dev extra", allow_module_level=True)

from PIL import Image  # noqa: E402
from test_dupes import TRANSFORMS, transform  # noqa: E402
from test_filters import exif_bytes  # noqa: E402
from tiny_align import tiny_model  # noqa: E402

from vsa_search import index  # noqa: E402
from vsa_search.serve import Engine  # noqa: E402

EXIF = {"paris.jpg": ("horse", ("2019:07:14 10:00:00", "Canon", "Canon EOS 80D", (48.8584, 2.2945))),
        "london.jpg": ("rocket", ("2021:03:01 18:30:05", "NIKON", "NIKON D750", (51.5007, -0.1246))),
        "nodate.jpg": ("brick", (None, "Canon", "Canon EOS 80D", None))}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, sample_photos: list[Path]) -> Iterator[tuple[str, Engine]]:
    root = tmp_path_factory.mktemp("serve-filters")
    photos = root / "photos"
    photos.mkdir()
    examples = sample_photos[0].parent
    for name, (src, tags) in EXIF.items():
        Image.open(examples / f"{src}.jpg").convert("RGB").save(photos / name, quality=90, exif=exif_bytes(*tags))
    im = Image.open(examples / "coffee.jpg").convert("RGB")
    im.save(photos / "coffee.jpg", quality=90)
    rng = random.Random(0)
    for t in TRANSFORMS:
        if t != "crop10":
            copy, quality = transform(im, t, rng)
            copy.save(photos / f"coffee__{t}.jpg", quality=quality)
    link = root / "indexes" / "f"
    index.build([photos], name=link, model=tiny_model(root / "tiny.pt"))
    engine = Engine(str(link))
    with running(engine) as url:
        yield url, engine


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, server: tuple[str, Engine]) -> Iterator[Any]:
    pg = browser.new_page(viewport={"width": 1280, "height": 860})
    pg.set_default_timeout(60_000)
    problems: list[str] = []
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    pg.goto(server[0] + "/")
    yield pg
    pg.close()
    assert not problems, problems


def card_names(pg: Any) -> list[str]:
    return sorted(Path(p).name for p in pg.eval_on_selector_all("#results .card", "cs => cs.map(c => c.dataset.path)"))


def test_search_with_filters(page: Any, server: tuple[str, Engine]) -> None:
    page.fill("#f-after", "2019-01-01")
    page.fill("#q", "a dog on the grass")
    page.press("#q", "Enter")
    page.wait_for_url("**/#/search?*")
    settled(page)
    assert card_names(page) == ["london.jpg", "paris.jpg"]
    assert "after=2019-01-01" in page.url
    # the photos without a date are counted, not silently dropped
    assert page.inner_text("#filter-note").startswith("6 of 8 photos have no date taken")
    assert "2021-03-01 · NIKON D750" in page.inner_text("#results")
    api, _ = server[1].search_text("a dog on the grass", 24, where=index.MetaFilter.parse(after="2019-01-01"))
    assert card_names(page) == sorted(Path(h["path"]).name for h in api["hits"])

    page.fill("#f-after", "")
    page.fill("#f-camera", "canon")
    page.click("#f-apply")
    page.wait_for_function("() => location.hash.includes('camera=canon')")
    settled(page)  # london and paris are 2 cards too: wait for this view, not for a count
    assert card_names(page) == ["nodate.jpg", "paris.jpg"]

    page.fill("#f-camera", "")
    page.fill("#f-near", "51.5,-0.12")
    page.fill("#f-km", "5")
    page.click("#f-apply")
    page.wait_for_function("() => location.hash.includes('near=')")
    settled(page)
    assert card_names(page) == ["london.jpg"]

    page.fill("#f-near", "91,0")  # out of range: the server's one line, shown as is
    page.click("#f-apply")
    page.wait_for_function("() => location.hash.includes('near=91')")
    settled(page)
    assert page.inner_text("#search-error") == "--near: latitude 91 is out of range (-90 to 90)"

    page.click("#f-clear")
    page.wait_for_function("() => !location.hash.includes('near=')")
    settled(page)
    assert len(card_names(page)) == 8


def test_duplicates_page(page: Any, server: tuple[str, Engine]) -> None:
    page.click("#nav-dupes")
    page.wait_for_selector("#groups .group")
    api, _ = server[1].dupes(index.dupes.DEFAULT_THRESHOLD)
    assert len(api["groups"]) == 1
    group = page.locator("#groups .group")
    assert group.count() == 1
    shown = sorted(Path(p).name for p in page.eval_on_selector_all("#groups figure",
                                                                    "fs => fs.map(f => f.dataset.path)"))
    assert shown == sorted(["coffee.jpg", *(f"coffee__{t}.jpg" for t in TRANSFORMS if t != "crop10")])
    assert Path(page.get_attribute("#groups .group", "data-keep")).name == "coffee.jpg"
    assert Path(page.get_attribute("#groups figure.keep", "data-path")).name == "coffee.jpg"
    assert "turned" in page.inner_text("#groups figure[data-path$='coffee__rot90.jpg']")
    # a filter limits the photos compared: the copies have no date, so no group is left
    page.fill("#f-after", "2000-01-01")
    page.click("#f-apply")
    page.wait_for_function("() => location.hash.includes('after=')")
    settled(page)
    assert page.locator("#groups .group").count() == 0
    assert "6 of 8 photos have no date taken" in page.inner_text("#filter-note")
    page.fill("#threshold", "0")
    page.click("#dupes-form button")
    page.wait_for_selector("#dupes-error")
    assert "--threshold must be above 0" in page.inner_text("#dupes-error")
