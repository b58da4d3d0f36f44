"""Every command, given bad input, says one clear line on stderr and exits non-zero."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from vsa_search.cli import app

SHIPPED = Path(__file__).resolve().parent.parent / "weights"


def run(*args: str):
    return CliRunner().invoke(app, list(args), prog_name="vsa")


def one_line(r, code: int, contains: str) -> None:
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("error: ") and contains in r.stderr, r.stderr
    assert "Traceback" not in r.stderr + r.stdout


@pytest.fixture()
def junk(tmp_path: Path) -> Path:
    p = tmp_path / "junk.pt"
    p.write_text("this is not a model\n")
    return p


def test_index_build_of_a_folder_without_photos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VSA_HOME", str(tmp_path))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no photos here")
    r = run("index", "build", str(tmp_path / "empty"), "--index", "x")
    one_line(r, 2, "no photos (jpg, jpeg, png, webp, bmp, gif, heic, heif, avif) under")
    assert not (tmp_path / "indexes" / "x").exists()


def test_index_build_of_a_missing_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VSA_HOME", str(tmp_path))
    one_line(run("index", "build", str(tmp_path / "nope")), 2, "nope: no such file or directory")


def test_caption_of_a_folder_without_photos(tmp_path: Path) -> None:
    one_line(run("caption", str(tmp_path)), 2,
             "no photos (jpg, jpeg, png, webp, bmp, gif, heic, heif, avif) in this folder")


def test_caption_negative_beam_is_one_line(sample_photos: list[Path]) -> None:
    r = run("caption", str(sample_photos[0]), "--beam", "-1")
    one_line(r, 2, "Invalid value for '--beam'")
    assert "(see `vsa caption --help`)" in r.stderr


def test_wrong_model_file(junk: Path, sample_photos: list[Path]) -> None:
    r = run("caption", str(sample_photos[0]), "--model", str(junk))
    one_line(r, 1, f"{junk}: not a vsa model file")


def test_model_of_the_other_kind(sample_photos: list[Path]) -> None:
    r = run("align", str(sample_photos[0]), "a dog", "--model", str(SHIPPED / "caption.pt"))
    one_line(r, 1, "this is a caption model; an align model is needed here")


def test_eval_recall_k_zero() -> None:
    one_line(run("eval", "recall", "--k", "0"), 2, "--k needs positive integers")


def test_train_embed_without_a_feature_store(tmp_path: Path, flickr_root: Path) -> None:
    r = run("train", "embed", "--features", str(tmp_path / "none"), "--out", str(tmp_path / "m.pt"))
    one_line(r, 1, "no feature store here")
    assert not (tmp_path / "m.pt").exists()


def test_unknown_command_and_option() -> None:
    one_line(run("frobnicate"), 2, "No such command 'frobnicate'")
    one_line(run("search", "cat", "--bogus"), 2, "No such option: --bogus")


def test_eval_recall_generator_weights_need_two() -> None:
    one_line(run("eval", "recall", "--generator", "caption", "--generator-weights", "0.1"), 2,
             "--generator-weights '0.1': expected ANNOTATION,SEARCH")


def test_index_text_with_a_generator_without_prior_photos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VSA_HOME", str(tmp_path))
    (tmp_path / "s.txt").write_text("a dog runs on the grass\n")
    r = run("index", "text", str(tmp_path / "s.txt"), "--index", "t", "--generator", str(SHIPPED / "caption.pt"))
    one_line(r, 2, "caption.pt: a generator without prior photos cannot re-rank; add them with `vsa train "
                   "generator-prior`")
    assert not (tmp_path / "indexes" / "t").exists()


def test_querybank_bits_are_8_or_4(tmp_path: Path) -> None:
    r = run("train", "querybank", "--model", "align", "--features", str(tmp_path), "--out", str(tmp_path / "q.pt"),
            "--bits", "6")
    one_line(r, 2, "--bits 6: a bank's vectors are stored in 8 or 4 bits")
    assert not (tmp_path / "q.pt").exists()
    one_line(run("eval", "querybank-tune", "--features", str(tmp_path), "--sizes", "5000/400/8/1"), 2,
             "--sizes '5000/400/8/1': expected SENTENCES/PHOTOS[/BITS]")
