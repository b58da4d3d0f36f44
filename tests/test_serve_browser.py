"""`vsa serve`'s page in a real browser: headless Chromium (Debian's `chromium`, driven by Playwright)
against a server on the demo index. Type a query and see the right photo first with its word boxes;
move with the keyboard; open a photo and read its caption; align a sentence and see its fragments;
drop a photo; read the index page. The page must agree with the API it calls, box by box.

VSA_SCREENSHOTS=docs writes the page's screenshots there (the README shows them)."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("VSA_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
try:
    import uvicorn
    from playwright.sync_api import sync_playwright
    from starlette.applications import Starlette  # noqa: F401
except ImportError:
    sync_playwright = None  # type: ignore[assignment]
if CHROMIUM is None or sync_playwright is None:
    pytest.skip("skipped: they need Chromium (`apt-get install chromium`, or VSA_CHROMIUM=/path/to/chromium) and "
                "the dev extra (`pip install -e '.[dev]'`: playwright, starlette, uvicorn)", allow_module_level=True)

from serve_demo import EXAMPLES, demo_index  # noqa: E402

from vsa_search.serve import Engine, create_app  # noqa: E402

SHOTS = os.environ.get("VSA_SCREENSHOTS")


@contextmanager
def running(engine: Engine) -> Iterator[str]:
    """`engine`'s app served on a free local port while the block runs; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    app = create_app(engine, allowed_hosts=("127.0.0.1",))
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        srv.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Engine]]:
    engine = Engine(str(demo_index(tmp_path_factory)))
    with running(engine) as url:
        yield url, engine


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_playwright() as p:
        # --no-sandbox: Chromium's sandbox cannot start as root, as CI containers run.
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, server: tuple[str, Engine]) -> Iterator[Any]:
    pg = browser.new_page(viewport={"width": 1280, "height": 860})
    pg.set_default_timeout(60_000)  # a busy 2-core machine: captions run the CNN
    problems: list[str] = []
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    pg.on("console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None)
    pg.goto(server[0] + "/")
    yield pg
    pg.close()
    assert not problems, problems


def shot(pg: Any, name: str, full: bool = False) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        pg.wait_for_timeout(300)  # let the thumbnails and the highlight transition settle
        out = Path(SHOTS) / name
        pg.screenshot(path=str(out), full_page=full)
        from PIL import Image

        # 256 colours, dithered: a third of the bytes, for the README.
        Image.open(out).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)


def settled(pg: Any) -> None:
    """Wait until the page has drawn the view its address names (the previous view's cards stay until then)."""
    pg.wait_for_function("() => document.getElementById('main').dataset.shown === (location.hash || '#/')")


def search(pg: Any, query: str) -> None:
    pg.fill("#q", query)
    pg.press("#q", "Enter")
    pg.wait_for_url("**/#/search?*")
    settled(pg)
    pg.wait_for_selector("#results .card")


def boxes(pg: Any, scope: str) -> list[dict[str, Any]]:
    return pg.eval_on_selector_all(f"{scope} .box", """bs => bs.map(b => ({keys: b.dataset.keys, label: b.title,
        hl: b.classList.contains('hl'), left: parseFloat(b.style.left), width: parseFloat(b.style.width)}))""")


def test_search_shows_each_words_box(page: Any, server: tuple[str, Engine]) -> None:
    search(page, "a cup of coffee")
    api, _ = server[1].search_text("a cup of coffee", 24)
    paths = page.eval_on_selector_all("#results .card", "cs => cs.map(c => c.dataset.path)")
    assert paths == [h["path"] for h in api["hits"]]
    assert Path(paths[0]).name == "coffee.jpg"
    first = api["hits"][0]
    chips = page.eval_on_selector_all("#results .card:first-child .chip", "cs => cs.map(c => c.dataset.word)")
    assert chips == ["a", "cup", "of", "coffee"]
    # One box per distinct region, labelled with its words, placed in percent of the photo's size.
    want: dict[tuple[int, ...], list[int]] = {}
    for i, m in enumerate(first["words"]):
        want.setdefault(tuple(m["box"]), []).append(i)
    shown = boxes(page, "#results .card:first-child")
    assert sorted(b["keys"] for b in shown) == sorted(" ".join(map(str, v)) for v in want.values())
    for b in shown:
        x0, _, x1, _ = next(box for box, keys in want.items() if " ".join(map(str, keys)) == b["keys"])
        assert b["left"] == pytest.approx(100 * x0 / first["size"][0], abs=0.01)
        assert b["width"] == pytest.approx(100 * (x1 - x0) / first["size"][0], abs=0.01)
    # Hovering a word highlights its box (and only the boxes holding it).
    page.hover("#results .card:first-child .chip[data-word=cup]")
    lit = [b["keys"] for b in boxes(page, "#results .card:first-child") if b["hl"]]
    assert lit == [" ".join(map(str, next(v for v in want.values() if 1 in v)))]
    shot(page, "serve-search.png")


def test_keyboard_photo_page_caption_and_alignment(page: Any, server: tuple[str, Engine]) -> None:
    engine = server[1]
    search(page, "a cat")
    focused = "() => document.activeElement.dataset.rank"
    assert page.evaluate(focused) == "1"
    page.keyboard.press("ArrowRight")
    assert page.evaluate(focused) == "2"
    page.keyboard.press("ArrowLeft")
    assert page.evaluate(focused) == "1"
    api, _ = engine.search_text("a cat", 24)
    top = api["hits"][0]
    assert Path(top["path"]).name == "chelsea-cat.jpg"
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/#/photo/{top['id']}")
    page.wait_for_selector("#caption .logprob")
    want_caption = engine.caption(Path(top["path"]), 7)[0]
    assert page.inner_text("#caption").startswith(want_caption["caption"])

    sentence = "a cat with green eyes looks at the camera"
    page.fill("#sentence", sentence)
    page.press("#sentence", "Enter")
    page.wait_for_selector("#fragments .fragment")
    want = engine.align_id(top["id"], sentence)["fragments"]
    assert page.eval_on_selector_all("#fragments .fragment .text", "fs => fs.map(f => f.textContent)") == \
        [f["text"] for f in want]
    assert [b["label"] for b in boxes(page, "#detail-photo")] == [f["text"] for f in want]
    page.hover("#fragments .fragment:first-child")
    assert [b["keys"] for b in boxes(page, "#detail-photo") if b["hl"]] == ["0"]
    shot(page, "serve-photo.png")

    page.click("#show-regions")
    page.wait_for_selector("#region-captions li[data-key]")
    regions = engine.region_captions(Path(top["path"]), beam=3, top=6)["photos"][0]["regions"]
    assert page.eval_on_selector_all("#region-captions li[data-key]", "ls => ls.length") == len(regions) == 6
    assert page.inner_text("#region-captions li[data-key='0']").startswith(regions[0]["caption"])

    page.keyboard.press("Escape")  # back to the results
    page.wait_for_selector("#results .card")
    assert "#/search?q=a%20cat" in page.url


def test_drop_a_photo(page: Any, server: tuple[str, Engine]) -> None:
    photo = EXAMPLES / "coffee.jpg"
    page.evaluate("""([b64, name]) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], name, {type: "image/jpeg"}));
        for (const type of ["dragenter", "dragover", "drop"])
          document.body.dispatchEvent(new DragEvent(type, {dataTransfer: dt, bubbles: true, cancelable: true}));
    }""", [base64.b64encode(photo.read_bytes()).decode(), photo.name])
    page.wait_for_selector("#sentences li[data-source]")
    want = server[1].search_image(photo, 8)["hits"]
    got = page.eval_on_selector_all("#sentences li[data-source]", "ls => ls.map(l => l.firstChild.textContent)")
    assert got == [h["text"] for h in want]
    page.wait_for_selector("#caption .logprob")
    assert page.inner_text("#caption").startswith(server[1].caption(photo, 7)[0]["caption"])
    assert page.is_hidden("#drop")
    # Photos like the dropped file (not the indexed one: its bytes came over HTTP): its indexed twin first.
    page.wait_for_selector("#like-thumbs a")
    like = server[1].like(photo, k=8)[0]["hits"]
    assert page.eval_on_selector_all("#like-thumbs a", "as => as.map(a => Number(a.dataset.id))") == \
        [h["id"] for h in like]
    assert Path(like[0]["path"]).name == "coffee.jpg"
    page.hover("#sentences li[data-source]:first-child")  # that sentence's words on the dropped photo
    assert len(boxes(page, "#detail-photo")) == len({tuple(m["box"]) for m in want[0]["words"]})
    shot(page, "serve-drop.png")


def test_index_page(page: Any, server: tuple[str, Engine]) -> None:
    page.click("#nav-index")
    page.wait_for_selector("#thumbs img")
    status = page.inner_text("#status")
    assert "photos\t12" in status and "regions\t240" in status and "sentence index\t8 sentences" in status
    assert page.eval_on_selector_all("#thumbs img", "is => is.length") == 12
    assert "not-a-photo.jpg" in page.inner_text("#skipped")
    page.wait_for_function("() => [...document.querySelectorAll('#thumbs img')].every(i => i.complete)")
    shot(page, "serve-index.png", full=True)


def card_paths(pg: Any) -> list[str]:
    return pg.eval_on_selector_all("#results .card", "cs => cs.map(c => c.dataset.path)")


def test_more_like_this(page: Any, server: tuple[str, Engine]) -> None:
    engine = server[1]
    search(page, "a cup of coffee")
    first = int(page.get_attribute("#results .card:first-child", "data-id"))
    page.click("#results .card:first-child .more-like")
    page.wait_for_url(f"**/#/like/{first}")
    api, _ = engine.like(first, k=24)
    want = [h["path"] for h in api["hits"]]
    settled(page)  # the search's cards stay until the like view draws its own
    assert page.locator("#like-query").count() == 1
    assert card_paths(page) == want and len(api["hits"]) == 11  # all but itself
    # Box n on a hit is the region that region n of the query photo matched best, drawn on both photos.
    for rank, hit in ((1, api["hits"][0]), (2, api["hits"][1])):
        page.hover(f"#results .card:nth-child({rank}) .name")
        pairs = [p for p in hit["regions"] if p["shown"]]
        assert pairs, "no region pair to draw"
        drawn = boxes(page, f"#results .card:nth-child({rank})")
        assert [b["label"] for b in drawn] == [str(i + 1) for i in range(len(pairs))]
        for b, p in zip(drawn, pairs):
            assert b["left"] == pytest.approx(100 * p["box"][0] / hit["size"][0], abs=0.01)
        query = boxes(page, "#like-query")
        assert [b["label"] for b in query] == [str(i + 1) for i in range(len(pairs))]
        for b, p in zip(query, pairs):
            assert b["left"] == pytest.approx(100 * p["query_box"][0] / api["like"]["size"][0], abs=0.01)
            assert b["width"] == pytest.approx(100 * (p["query_box"][2] - p["query_box"][0]) / api["like"]["size"][0],
                                               abs=0.01)
    page.hover("#results .card:first-child .name")
    shot(page, "serve-like.png")
    # The photo page has the same button.
    page.goto(f"{server[0]}/#/photo/{api['hits'][0]['id']}")
    page.click("#more-like")
    page.wait_for_url(f"**/#/like/{api['hits'][0]['id']}")
    page.wait_for_selector("#results .card")
    assert card_paths(page) == [h["path"] for h in engine.like(api["hits"][0]["id"], k=24)[0]["hits"]]


def test_minus_field(page: Any, server: tuple[str, Engine]) -> None:
    page.fill("#q", "a photo")
    page.fill("#minus", "a cat")
    page.press("#q", "Enter")
    page.wait_for_url("**/#/search?q=a%20photo&minus=a%20cat")
    page.wait_for_selector("#results .card")
    api, _ = server[1].search_text("a photo", 24, minus=["a cat"])
    shown = api["hits"] or api["below_floor"]
    assert card_paths(page) == [h["path"] for h in shown]
    # The photo "a cat" matches best falls (every hit ranked: no floor).
    ranked = [[h["path"] for h in server[1].search_text("a photo", 24, minus=m, min_score=0)[0]["hits"]]
              for m in (None, ["a cat"])]
    cat = next(p for p in ranked[0] if p.endswith("chelsea-cat.jpg"))
    assert ranked[1].index(cat) > ranked[0].index(cat)
    chips = page.eval_on_selector_all("#results .card:first-child .chip", "cs => cs.map(c => [c.textContent, "
                                      "c.dataset.negative === '1'])")
    assert chips == [["a", False], ["photo", False], ["−a", True], ["−cat", True]]
    neg = {tuple(w["box"]) for w in shown[0]["words"] if w["negative"]}
    assert page.eval_on_selector_all("#results .card:first-child .box.neg", "bs => bs.length") == len(neg)
    shot(page, "serve-minus.png")


def test_a_late_answer_is_not_drawn_over_a_newer_search(page: Any, server: tuple[str, Engine]) -> None:
    # Note each response the page has read (the page draws in the same turn, once its JSON is parsed).
    page.add_init_script("""const json = Response.prototype.json;
      Response.prototype.json = async function () {
        const body = await json.call(this);
        (window.readUrls = window.readUrls || []).push(this.url);
        return body;
      };""")
    page.reload()
    held: list[Any] = []
    page.route(lambda url: "/api/search?" in url and "rocket" in url, lambda r: held.append(r))
    page.fill("#q", "a red rocket")
    page.press("#q", "Enter")
    deadline = time.monotonic() + 60
    while not held:  # the rocket search waits, held at the network
        assert time.monotonic() < deadline, "the search was not sent"
        page.wait_for_timeout(20)
    search(page, "a cup of coffee")  # a newer search, answered first
    held[0].continue_()
    page.wait_for_function("() => (window.readUrls || []).some(u => u.includes('rocket'))")
    settled(page)
    assert page.url.endswith("#/search?q=a%20cup%20of%20coffee") and "“a cup of coffee”" in page.inner_text("#summary")
    api, _ = server[1].search_text("a cup of coffee", 24)
    assert card_paths(page) == [h["path"] for h in api["hits"]]


def test_relevance_floor(page: Any, server: tuple[str, Engine]) -> None:
    api, _ = server[1].search_text("qwerty zxcv", 24)
    if api["floor"] is None:
        pytest.skip("no calibration for the shipped model (vsa eval calibrate)")
    assert api["hits"] == [] and api["below_floor"]
    search(page, "qwerty zxcv")
    assert page.inner_text("#floor-note").startswith("no photo matches “qwerty zxcv” well")
    assert card_paths(page) == [h["path"] for h in api["below_floor"]]
    assert page.eval_on_selector_all("#results .card", "cs => cs.every(c => c.classList.contains('below'))")
    shot(page, "serve-floor.png")
