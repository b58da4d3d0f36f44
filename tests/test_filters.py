"""Metadata filters: EXIF date taken, camera and GPS position written by the test, stored at build time,
and `vsa search` / `vsa dupes` with --after/--before/--camera/--near/--km. A photo without a date under
a date filter is counted and reported, never dropped silently; bad input is one line."""

from __future__ import annotations

import json
import shutil
from datetime import date
from pathlib import Path

import pytest
from PIL import Image
from tiny_align import tiny_model
from typer.testing import CliRunner

from vsa_search.cli import app
from vsa_search.core.errors import UsageError
from vsa_search.index import filters, open_index
from vsa_search.index.photometa import current
from vsa_search.vision.exif import read_exif

runner = CliRunner()
# name -> (date taken, make, model, (lat, lon) or None); None: no EXIF at all
PHOTOS = {
    "paris.jpg": ("2019:07:14 10:00:00", "Canon", "Canon EOS 80D", (48.8584, 2.2945)),
    "london.jpg": ("2021:03:01 18:30:05", "NIKON CORPORATION", "NIKON D750", (51.5007, -0.1246)),
    "sydney.jpg": ("2021:12:31 23:59:59", "Apple", "iPhone 12", (-33.8568, 151.2153)),
    "versailles.jpg": ("2022:06:01 09:00:00", "Canon", "Canon EOS R5", (48.8049, 2.1204)),
    "nodate.jpg": (None, "Canon", "Canon EOS 80D", None),
    "plain.jpg": None,
}


def exif_bytes(taken: str | None, make: str, model: str, gps: tuple[float, float] | None) -> bytes:
    exif = Image.Exif()
    exif[271], exif[272] = make, model
    if taken:
        exif.get_ifd(0x8769)[36867] = taken
    if gps:
        def dms(x: float) -> tuple[float, float, float]:
            x = abs(x)
            d, m = int(x), int(abs(x) * 60) % 60
            return (float(d), float(m), round((x * 3600) % 60, 4))
        g = exif.get_ifd(0x8825)
        g[1], g[2] = ("N" if gps[0] >= 0 else "S"), dms(gps[0])
        g[3], g[4] = ("E" if gps[1] >= 0 else "W"), dms(gps[1])
    return exif.tobytes()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, sample_photos: list[Path]) -> Path:
    home = tmp_path_factory.mktemp("exif")
    photos = home / "photos"
    photos.mkdir()
    for (name, tags), src in zip(PHOTOS.items(), sample_photos, strict=False):
        im = Image.open(src).convert("RGB")
        if tags is None:
            im.save(photos / name, quality=90)
        else:
            im.save(photos / name, quality=90, exif=exif_bytes(*tags))
    model = tiny_model(home / "tiny.pt")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VSA_HOME", str(home))
        res = runner.invoke(app, ["index", "build", str(photos), "--model", str(model)])
    assert res.exit_code == 0, res.stderr
    return home


@pytest.fixture
def env(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VSA_HOME", str(home))
    return home


def test_exif_is_read_and_stored(home: Path) -> None:
    photos = home / "photos"
    assert read_exif(photos / "paris.jpg") == {"taken": "2019-07-14T10:00:00", "camera": "Canon EOS 80D",
                                               "gps": [48.8584, 2.2945]}
    assert read_exif(photos / "sydney.jpg")["gps"] == [-33.8568, 151.2153]
    assert read_exif(photos / "london.jpg")["camera"] == "NIKON D750"  # the model repeats the make
    assert read_exif(photos / "nodate.jpg") == {"camera": "Canon EOS 80D"}
    assert read_exif(photos / "plain.jpg") == {}
    with open_index(home / "indexes" / "default") as ix:
        stored = {Path(r["key"]).name: current(r) for r in ix.records()}
    assert stored["paris.jpg"]["taken"] == "2019-07-14T10:00:00" and stored["paris.jpg"]["gps"] == [48.8584, 2.2945]
    assert "taken" not in stored["plain.jpg"] and len(stored["plain.jpg"]["phash"]) == 16


def names(res) -> list[str]:
    assert res.exit_code == 0, res.stderr
    return sorted(Path(h["path"]).name for h in json.loads(res.stdout)["hits"])


def search(*args: str):
    return runner.invoke(app, ["search", "a dog on the grass", "-k", "10", "--json", *args])


def test_date_filters_count_the_photos_without_a_date(env: Path) -> None:
    res = search("--after", "2021-01-01")
    assert names(res) == ["london.jpg", "sydney.jpg", "versailles.jpg"]
    f = json.loads(res.stdout)["filter"]
    assert (f["no_date"], f["photos"], f["after"]) == (2, 6, "2021-01-01")
    assert "2 of 6 photos have no date taken" in res.stderr
    assert names(search("--after", "2021-03-01", "--before", "2021-12-31")) == ["london.jpg", "sydney.jpg"]
    assert names(search("--before", "2019-07-14")) == ["paris.jpg"]  # both ends are inclusive days
    hit = json.loads(search("--before", "2019-07-14").stdout)["hits"][0]
    assert (hit["taken"], hit["camera"], hit["gps"]) == ("2019-07-14T10:00:00", "Canon EOS 80D", [48.8584, 2.2945])


def test_camera_and_place(env: Path) -> None:
    assert names(search("--camera", "canon")) == ["nodate.jpg", "paris.jpg", "versailles.jpg"]
    assert names(search("--camera", "eos 80d", "--after", "2000-01-01")) == ["paris.jpg"]
    # the Eiffel tower: Versailles is 14 km away, London 340 km
    assert names(search("--near", "48.8584,2.2945", "--km", "1")) == ["paris.jpg"]
    assert names(search("--near", "48.8584,2.2945", "--km", "20")) == ["paris.jpg", "versailles.jpg"]
    assert names(search("--near", "48.8584,2.2945", "--km", "400")) == ["london.jpg", "paris.jpg", "versailles.jpg"]
    res = search("--near", "-33.86,151.21")  # default radius 10 km
    assert names(res) == ["sydney.jpg"] and json.loads(res.stdout)["filter"]["no_gps"] == 2
    assert names(search()) == sorted(PHOTOS)  # no filter: every photo, no "filter" field
    assert "filter" not in json.loads(search().stdout)


def test_dupes_takes_the_filters(env: Path) -> None:
    res = runner.invoke(app, ["dupes", "--json", "--after", "2021-01-01"])
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["photos"] == 3 and out["filter"]["no_date"] == 2 and out["groups"] == []
    assert "2 of 6 photos have no date taken" in res.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--after", "2021-13-01"], "--after: '2021-13-01' is not a date (YYYY-MM-DD)"),
    (["--before", "yesterday"], "--before: 'yesterday' is not a date (YYYY-MM-DD)"),
    (["--after", "2022-01-01", "--before", "2021-01-01"], "--after 2022-01-01 is later than --before 2021-01-01"),
    (["--near", "91,0"], "--near: latitude 91 is out of range (-90 to 90)"),
    (["--near", "0,200"], "--near: longitude 200 is out of range (-180 to 180)"),
    (["--near", "paris"], "--near: 'paris' is not a place"),
    (["--near", "0,0", "--km", "-3"], "--km must be a distance above 0"),
    (["--km", "3"], "--km needs --near LAT,LON"),
])
@pytest.mark.parametrize("command", [["search", "a dog", "--json"], ["dupes", "--json"]])
def test_bad_filters_are_one_line(env: Path, command: list[str], args: list[str], message: str) -> None:
    res = runner.invoke(app, [*command, *args])
    assert res.exit_code == 2 and res.stdout == "", (res.stdout, res.stderr)
    assert res.stderr.count("\n") == 1 and message in res.stderr and "Traceback" not in res.stderr


def test_filter_applies_to_any_list() -> None:
    f = filters.MetaFilter.parse(after="2020-01-01", camera="canon")
    metas = {"a": {"taken": "2020-05-01T00:00:00", "camera": "Canon EOS"}, "b": {"taken": "2019-05-01T00:00:00",
             "camera": "Canon EOS"}, "c": {"camera": "Canon"}, "d": None}
    report = filters.report_for(metas.values(), f)
    kept = filters.apply([{"path": k} for k in "abcd"], lambda x: x["path"], metas, f, report)
    assert kept == [{"path": "a"}] and (report.no_date, report.no_meta, report.kept, report.dropped) == (1, 1, 1, 3)
    assert any("indexed before EXIF was stored" in line for line in report.notes())
    assert f.after == date(2020, 1, 1)
    with pytest.raises(UsageError):
        filters.MetaFilter.parse(camera="  ")


def test_old_index_gets_meta_on_rebuild(env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An index from before the metadata was stored: its records lack it; the next build adds it
    without the CNN (nothing encoded) and the filters then work."""
    from vsa_search.index import photos as photo_build

    (tmp_path / "p").mkdir()
    shutil.copy2(env / "photos" / "paris.jpg", tmp_path / "p" / "paris.jpg")
    model = env / "tiny.pt"
    monkeypatch.setattr(photo_build.photometa, "of_prepared", lambda photo: {"v": 0})
    monkeypatch.setattr(photo_build.photometa, "describe", lambda path, mp=0, min_side=None: {"v": 0})
    assert runner.invoke(app, ["index", "build", str(tmp_path / "p"), "--index", "old", "--model", str(model)]
                         ).exit_code == 0
    monkeypatch.undo()
    monkeypatch.setenv("VSA_HOME", str(env))
    res = runner.invoke(app, ["search", "a dog", "--index", "old", "--json", "--after", "2000-01-01"])
    assert names(res) == [] and json.loads(res.stdout)["filter"]["no_meta"] == 1
    assert "run `vsa index build` to add them" in res.stderr
    res = runner.invoke(app, ["index", "build", "--index", "old", "--model", str(model), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["encoded"] == 0
    assert names(runner.invoke(app, ["search", "a dog", "--index", "old", "--json", "--after", "2000-01-01"])) \
        == ["paris.jpg"]


def test_python_api(env: Path) -> None:
    import vsa_search
    from vsa_search import index

    where = vsa_search.MetaFilter.parse(after="2021-01-01", camera="canon")
    result = index.search("a dog on the grass", name="default", k=10, where=where)
    assert [Path(h.key).name for h in result.hits] == ["versailles.jpg"]
    assert (result.filter.no_date, result.filter.photos) == (2, 6)
    found = vsa_search.dupes(name="default")
    assert (found.photos, found.groups) == (6, [])
