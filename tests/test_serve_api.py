"""`vsa serve`'s JSON API: it answers exactly as the CLI's --json does, picks up a rebuilt index without a
restart, and refuses bad requests with a JSON error and a 4xx status (never a traceback, never a file
outside the index)."""

from __future__ import annotations

import io
import json
import shutil
import socket
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

pytest.importorskip("starlette", reason="vsa serve needs starlette (pip install -e '.[serve]')")
pytest.importorskip("httpx", reason="starlette's TestClient needs httpx (pip install -e '.[dev]')")

from PIL import Image  # noqa: E402
from serve_demo import EXAMPLES, demo_index  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from vsa_search import index  # noqa: E402
from vsa_search.cli import app as cli  # noqa: E402
from vsa_search.core.errors import SearchIndexError  # noqa: E402
from vsa_search.serve import Engine, create_app  # noqa: E402

COFFEE = EXAMPLES / "coffee.jpg"


def vsa_json(*args: str) -> object:
    r = CliRunner().invoke(cli, list(args), prog_name="vsa")
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def link(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_index(tmp_path_factory)


@pytest.fixture(scope="module")
def engine(link: Path) -> Engine:
    return Engine(str(link))


@pytest.fixture(scope="module")
def client(engine: Engine) -> TestClient:
    return TestClient(create_app(engine), raise_server_exceptions=False)


def photo_id(client: TestClient, name: str) -> int:
    rows = client.get("/api/photos", params={"limit": 100}).json()["photos"]
    return next(r["id"] for r in rows if Path(r["path"]).name == name)


def json_error(r, status: int, contains: str = "") -> None:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"} and contains in body["error"], body
    assert "Traceback" not in r.text


# --------------------------------------------------------------------------- same answers as the CLI


@pytest.mark.parametrize("query", ["a cup of coffee", "a cat", "a man in a red shirt with xyzzy"])
def test_search_equals_cli(client: TestClient, link: Path, query: str) -> None:
    r = client.get("/api/search", params={"q": query, "k": 5})
    assert r.status_code == 200 and r.headers["X-VSA-Generation"].startswith(".demo.g")
    got = r.json()
    for hit in [*got["hits"], *got["below_floor"]]:  # hits under the relevance floor carry ids too
        photo = client.get(f"/api/photos/{hit.pop('id')}").json()
        assert photo["path"] == hit["path"] and hit.pop("size") == photo["size"] == photo["boxes"][0][2:]
    assert got == vsa_json("search", query, "--index", str(link), "-k", "5", "--json")
    if query == "a cup of coffee":
        assert Path(got["hits"][0]["path"]).name == "coffee.jpg"
        assert [m["word"] for m in got["hits"][0]["words"]] == ["a", "cup", "of", "coffee"]
    if "xyzzy" in query:  # outside the model's vocabulary, but GloVe knows it: scored through the bridge
        assert got["bridged"] == ["xyzzy"] and got["ignored"] == []


def test_like_and_minus_equal_cli(client: TestClient, link: Path) -> None:
    horse = photo_id(client, "horse.jpg")
    got = client.get(f"/api/photos/{horse}/like", params={"k": 4, "q": "a horse"}).json()
    assert got["like"].pop("size") == client.get(f"/api/photos/{horse}").json()["size"]
    for hit in got["hits"]:
        assert hit.pop("size") == client.get(f"/api/photos/{hit['id']}").json()["size"]
    assert got == vsa_json("search", "a horse", "--like", str(horse), "--index", str(link), "-k", "4", "--json")
    assert horse not in [h["id"] for h in got["hits"]]
    up = client.post("/api/like", params={"k": 3, "name": "mine.jpg"}, content=COFFEE.read_bytes()).json()
    assert up["like"]["photo"] == "mine.jpg" and up["like"]["id"] is None
    assert Path(up["hits"][0]["path"]).name == "coffee.jpg"
    json_error(client.post("/api/like", params={"name": "notes.jpg"}, content=b"plain text"), 422,
               "notes.jpg: not an image file")
    json_error(client.get("/api/photos/999/like"), 404, "no photo 999")
    r = client.get("/api/search", params=[("q", "a photo"), ("minus", "a cat"), ("k", "5"), ("min_score", "0")])
    got = r.json()
    for hit in got["hits"]:
        del hit["id"], hit["size"]
    assert got == vsa_json("search", "a photo", "--minus", "a cat", "--min-score", "0", "--index", str(link),
                           "-k", "5", "--json")


def test_status_equals_cli(client: TestClient, link: Path) -> None:
    got = client.get("/api/status").json()
    assert got == vsa_json("index", "status", "--index", str(link), "--json")
    assert got["photos"]["photos"] == 12 and got["photos"]["skipped"] == 1 and got["sentences"]["sentences"] == 8
    skipped = client.get("/api/skipped").json()["skipped"]
    assert [Path(s["path"]).name for s in skipped] == ["not-a-photo.jpg"]
    assert skipped[0]["reason"].endswith("not-a-photo.jpg: not an image file")


def test_caption_equals_cli(client: TestClient) -> None:
    i = photo_id(client, "coffee.jpg")
    path = client.get(f"/api/photos/{i}").json()["path"]
    got = client.get(f"/api/photos/{i}/caption", params={"beam": 3}).json()
    assert got == vsa_json("caption", path, "--beam", "3", "--json")
    assert len(got[0]["caption"].split()) >= 3
    regions = client.get(f"/api/photos/{i}/caption", params={"beam": 2, "regions": 1, "top": 3}).json()
    assert regions == vsa_json("caption", path, "--regions", "--top", "3", "--beam", "2", "--json")
    assert len(regions["photos"][0]["regions"]) == 3


def test_align_without_beta_uses_the_mrfs_default(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """The API's β is align.mrf.DEFAULT_BETA itself, not a copy of its value."""
    from vsa_search.align import mrf

    monkeypatch.setattr(mrf, "DEFAULT_BETA", 0.25)
    got = client.get("/api/photos/0/align", params={"sentence": "a cat on the grass"}).json()
    assert got["beta"] == 0.25


def test_align_equals_cli(client: TestClient, link: Path) -> None:
    i = photo_id(client, "chelsea-cat.jpg")
    path = client.get(f"/api/photos/{i}").json()["path"]
    sentence = "a cat with green eyes looks at the camera"
    got = client.get(f"/api/photos/{i}/align", params={"sentence": sentence, "beta": 0.1}).json()
    assert got["regions_from"] == f"index {link}"  # the index's stored regions, as the CLI uses them
    assert got == vsa_json("align", path, sentence, "--index", str(link), "--beta", "0.1", "--json")
    assert " ".join(f["text"] for f in got["fragments"]) == sentence


def test_uploads_equal_cli(client: TestClient, link: Path) -> None:
    """A dropped photo: nearest sentences, caption and alignment, as the CLI gives for the file."""
    body = COFFEE.read_bytes()
    got = client.post("/api/search/image", params={"k": 3, "name": "coffee.jpg"}, content=body).json()
    want = vsa_json("search", "--image", str(COFFEE), "--index", str(link), "-k", "3", "--json")
    assert got["query"] == "coffee.jpg" and want["query"] == str(COFFEE)
    assert {**got, "query": None} == {**want, "query": None} and len(got["hits"]) == 3
    cap = client.post("/api/caption", params={"beam": 3, "name": "coffee.jpg"}, content=body).json()
    want_cap = vsa_json("caption", str(COFFEE), "--beam", "3", "--json")
    assert cap == [{**want_cap[0], "photo": "coffee.jpg"}]
    al = client.post("/api/align", params={"sentence": "a cup of coffee", "name": "x.jpg"}, content=body).json()
    want_al = vsa_json("align", str(COFFEE), "a cup of coffee", "--no-index", "--json")
    assert al == {**want_al, "photo": "x.jpg"}


# --------------------------------------------------------------------------- photos by id only


def test_photos_served_by_id_only(client: TestClient, engine: Engine) -> None:
    i = photo_id(client, "coffee.jpg")
    thumb = client.get(f"/api/photos/{i}/image", params={"size": 100})
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) == 100
    full = client.get(f"/api/photos/{i}/image", params={"full": 1})
    assert full.content == COFFEE.read_bytes()
    json_error(client.get("/api/photos/12/image"), 404, "no photo 12")  # ids 0..11
    for bad in ("-1", "1.5", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "coffee.jpg"):
        r = client.get(f"/api/photos/{bad}/image")
        assert r.status_code == 404 and "root:" not in r.text and "error" in r.json(), (bad, r.text)
    for bad in ("/static/../engine.py", "/static/%2e%2e/engine.py", "/static/..%2F..%2Fcli%2Fserve.py"):
        r = client.get(bad)
        assert r.status_code == 404 and "import" not in r.text, (bad, r.text)
    gen = client.get("/api/photos").json()["generation"]
    assert client.get(f"/api/photos/{i}/image", params={"g": gen}).status_code == 200
    json_error(client.get(f"/api/photos/{i}/image", params={"g": ".demo.g000000"}), 410, "rebuilt")


@pytest.mark.parametrize("raw", ["%C2%B2", "%D9%A1", "%EF%BC%91", "%E0%A5%A7", "1%0A", "%201", "+1", "0x1", "1_0",
                                 "0" * 13])
def test_ids_are_ascii_digits(client: TestClient, raw: str) -> None:
    """A superscript two, an Arabic-Indic or full-width one: not photo ids (no 500, no photo 1)."""
    for url in (f"/api/photos/{raw}", f"/api/photos/{raw}/image", f"/api/photos/{raw}/caption",
                f"/api/photos/{raw}/align?sentence=a+cat"):
        json_error(client.get(url), 404, "addressed by their index id")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.text(min_size=1, max_size=16) | st.from_regex(r"[0-9]{1,14}", fullmatch=True)
       | st.text(st.characters(categories=("Nd", "No")), min_size=1, max_size=3))  # any script's digits
def test_any_id_is_a_photo_or_404(client: TestClient, raw: str) -> None:
    assume("/" not in raw)  # a slash is a path separator, not part of an id
    # Every byte percent-encoded: the server sees the string itself, not what a URL parser makes of it.
    quoted = "".join(f"%{b:02X}" for b in raw.encode("utf-8"))
    for url in (f"/api/photos/{quoted}", f"/api/photos/{quoted}/image"):
        r = client.get(url)
        photo = raw.isascii() and raw.isdigit() and len(raw) <= 12 and int(raw) < 12
        assert r.status_code == (200 if photo else 404), (raw, r.status_code, r.text)
        if photo and url.endswith(quoted):
            assert r.json()["id"] == int(raw)


def test_page_and_assets_are_local(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "<script src=\"/static/app.js\">" in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        r = client.get(asset)
        assert r.status_code == 200 and "http://" not in r.text and "https://" not in r.text
    assert "default-src 'self'" in page.headers["content-security-policy"]


# --------------------------------------------------------------------------- bad requests: JSON 4xx


@pytest.mark.parametrize(("url", "status", "contains"), [
    ("/api/search", 400, "give the q"),
    ("/api/search?q=%20%20", 400, "give the q"),
    ("/api/search?q=zzqxv+plugh", 400, "no word of"),
    ("/api/search?q=a+dog&k=0", 400, "k must be between"),
    ("/api/search?q=a+dog&k=many", 400, "not a whole number"),
    ("/api/photos/0/align", 400, "give the sentence"),
    ("/api/photos/0/align?sentence=a+dog&beta=-1", 400, "beta"),
    ("/api/photos/0/caption?beam=0", 400, "beam must be between"),
    ("/api/nothing-here", 404, "nothing at /api/nothing-here"),
    ("/api/caption", 405, ""),
])
def test_bad_requests(client: TestClient, url: str, status: int, contains: str) -> None:
    json_error(client.get(url), status, contains)


def test_bad_uploads(engine: Engine, tmp_path: Path) -> None:
    small = TestClient(create_app(engine, max_upload=20_000))
    body = COFFEE.read_bytes()  # 31 kB
    json_error(small.post("/api/caption", content=body), 413, "over the 20000 byte limit")
    # Without a Content-Length (chunked), the cap holds while the body streams in.
    chunks = (body[i:i + 4096] for i in range(0, len(body), 4096))
    json_error(small.post("/api/caption", content=chunks), 413, "over the 20000 byte limit")
    json_error(small.post("/api/caption", content=b""), 400, "empty upload")
    r = small.post("/api/caption", params={"name": "notes.jpg"}, content=b"plain text, not a photo")
    json_error(r, 422, "notes.jpg: not an image file")
    assert "vsa-upload" not in r.text  # the temporary file's name never leaks
    # A decompression bomb: 100 megapixels in a few kilobytes, refused on its header before decoding.
    buf = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buf, format="PNG")
    assert len(buf.getvalue()) < 20_000
    json_error(small.post("/api/search/image", content=buf.getvalue()), 413, "megapixels")


def test_server_fault_is_json_without_traceback(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    c = TestClient(create_app(engine), raise_server_exceptions=False)
    monkeypatch.setattr(engine, "status", lambda: 1 / 0)
    json_error(c.get("/api/status"), 500, "internal error (ZeroDivisionError)")


# --------------------------------------------------------------------------- token, host, CLI guard


def test_token(engine: Engine) -> None:
    c = TestClient(create_app(engine, token="s3cret"))
    json_error(c.get("/api/status"), 401, "needs its token")
    json_error(c.get("/api/status", headers={"Authorization": "Bearer wrong"}), 401)
    assert c.get("/api/status", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    json_error(c.get("/", params={"token": "wrong"}, follow_redirects=False), 401, "wrong token")
    r = c.get("/", params={"token": "s3cret"}, follow_redirects=False)
    assert r.status_code == 303 and "vsa_token=s3cret" in r.headers["set-cookie"]
    assert c.get("/api/status").status_code == 200  # the cookie now stands for the token


def test_host_header_checked_on_loopback(engine: Engine) -> None:
    c = TestClient(create_app(engine, allowed_hosts=("127.0.0.1", "localhost")), base_url="http://127.0.0.1:8000")
    assert c.get("/api/status").status_code == 200
    json_error(c.get("/api/status", headers={"Host": "attacker.example:8000"}), 400, "unexpected Host")


def one_line_error(r, contains: str) -> None:
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and contains in r.stderr, r.stderr


def test_cli_refuses_network_host_without_token(link: Path) -> None:
    r = CliRunner().invoke(cli, ["serve", "--index", str(link), "--host", "0.0.0.0"], prog_name="vsa")
    one_line_error(r, "--token")


def test_cli_busy_port(link: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        r = CliRunner().invoke(cli, ["serve", "--index", str(link), "--port", str(s.getsockname()[1])],
                               prog_name="vsa")
    one_line_error(r, "cannot listen on 127.0.0.1")


def test_missing_index_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(SearchIndexError, match="no photo index"):
        Engine(str(tmp_path / "nothing"))


# --------------------------------------------------------------------------- generation swap


def test_rebuilt_index_is_picked_up(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("coffee.jpg", "horse.jpg"):
        shutil.copy2(EXAMPLES / name, photos / name)
    link = tmp_path / "indexes" / "swap"
    index.build([photos], name=link)
    c = TestClient(create_app(Engine(str(link))))
    first = c.get("/api/search", params={"q": "a cat", "k": 5, "min_score": 0})  # every photo, floor or not
    assert len(first.json()["hits"]) == 2
    json_error(c.post("/api/search/image", content=COFFEE.read_bytes()), 404, "no sentence index")
    old = c.get("/api/photos").json()["generation"]

    shutil.copy2(EXAMPLES / "chelsea-cat.jpg", photos / "chelsea-cat.jpg")
    index.build([photos], name=link)  # a new generation swapped in under the running server
    again = c.get("/api/search", params={"q": "a cat", "k": 5})
    assert again.headers["X-VSA-Generation"] != old
    assert [Path(h["path"]).name for h in again.json()["hits"]][0] == "chelsea-cat.jpg"
    assert c.get("/api/status").json()["photos"]["photos"] == 3
    json_error(c.get("/api/photos/0/image", params={"g": old}), 410, "rebuilt")
