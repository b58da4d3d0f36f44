"""The paper's protocol: no test-split photo or caption may reach training, the vocabulary or model
selection. Proved by poisoning the test split (other captions, other photos) and checking that the
vocabulary and the trained weights come out bit-identical."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from vsa_search.core.config import CAPTION_PRESETS, EMBED_PRESETS, REGION_PRESETS
from vsa_search.data.datasets import FLICKR8K_SPLIT_FILES, FLICKR8K_TOKENS, load_flickr8k
from vsa_search.data.vocab import build_flickr8k_vocab
from vsa_search.models.alignment import load_align
from vsa_search.train import train_caption, train_embed
from vsa_search.vision.features import extract_to_store

WORDS = "dog cat man woman runs jumps sits grass water snow red blue ball field street".split()


def _sentence(i: int, j: int) -> str:
    w = WORDS
    return f"a {w[i % 5]} {w[5 + (i + j) % 3]} on the {w[8 + j % 3]} with a {w[11 + i % 4]} {w[14]}"


def _make_root(tmp: Path, photos: list[Path], poisoned: bool) -> Path:
    """A Flickr8k-format root: 6 train, 3 dev, 3 test photos (symlinks to real photos). Poisoned:
    the test photos are other files and their captions use words seen nowhere else, 5 times each."""
    root = tmp / ("poisoned" if poisoned else "clean")
    (root / "images").mkdir(parents=True)
    (root / "splits").mkdir()
    names = {"train": [f"tr{i}.jpg" for i in range(6)], "dev": [f"dv{i}.jpg" for i in range(3)],
             "test": [f"te{i}.jpg" for i in range(3)]}
    lines = []
    for split, files in names.items():
        (root / FLICKR8K_SPLIT_FILES[split]).write_text("\n".join(files) + "\n")
        for i, name in enumerate(files):
            k = {"train": 0, "dev": 6, "test": 9}[split] + i
            src = photos[k + 3 if poisoned and split == "test" else k]
            (root / "images" / name).symlink_to(src)
            for j in range(5):
                text = (f"a zebra giraffe toothbrush {i} {j}" if poisoned and split == "test"
                        else _sentence(k, j))
                lines.append(f"{name}#{j}\t{text}")
    (root / FLICKR8K_TOKENS).write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def roots(tmp_path_factory, flickr_root: Path, tiny_region_encoder) -> dict[str, tuple[Path, Path]]:
    """(data-set root, feature store) for a clean and a poisoned copy of the same data set."""
    photos = sorted((flickr_root / "images").glob("*.jpg"))[:15]
    tmp = tmp_path_factory.mktemp("protocol")
    out = {}
    for poisoned in (False, True):
        root = _make_root(tmp, photos, poisoned)
        store = tmp / f"feats-{root.name}"
        ds = load_flickr8k(root)
        extract_to_store({r.image_id: r.path for r in ds.records}, store, REGION_PRESETS["tiny"],
                         encoder=tiny_region_encoder)
        out[root.name] = (root, store)
    return out


def test_poisoned_test_split_changes_nothing_in_the_vocabulary(roots):
    clean, poisoned = (build_flickr8k_vocab(roots[k][0], min_count=1) for k in ("clean", "poisoned"))
    assert clean.itos == poisoned.itos
    assert "zebra" not in poisoned.itos  # 15 times in the poisoned test captions, never in training


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def test_poisoned_test_split_changes_nothing_in_the_alignment_model(roots, tmp_path):
    runs = {}
    for name, (root, store) in roots.items():
        vocab = build_flickr8k_vocab(root, min_count=1)
        res = train_embed(store, tmp_path / f"{name}.pt", EMBED_PRESETS["tiny"], vocab=vocab,
                          dataset=load_flickr8k(root), device="cpu", epochs=2)
        runs[name] = (res, _weights(tmp_path / f"{name}.pt"))
    (clean, w_clean), (poisoned, w_poisoned) = runs["clean"], runs["poisoned"]
    assert [h["loss"] for h in clean.history] == [h["loss"] for h in poisoned.history]
    assert clean.best_epoch == poisoned.best_epoch  # model selection saw dev only
    assert w_clean.keys() == w_poisoned.keys()
    assert all(torch.equal(w_clean[k], w_poisoned[k]) for k in w_clean)


def test_poisoned_test_split_changes_nothing_in_the_caption_model(roots, tmp_path):
    weights = {}
    for name, (root, store) in roots.items():
        train_caption(store, tmp_path / f"{name}.pt", CAPTION_PRESETS["tiny"], device="cpu", root=root)
        weights[name] = _weights(tmp_path / f"{name}.pt")
    assert all(torch.equal(weights["clean"][k], weights["poisoned"][k]) for k in weights["clean"])


def test_poisoned_test_split_changes_nothing_in_the_attention_caption_model(roots, tmp_path):
    # Its inputs are all of a photo's regions (models/attention.py); the poisoned test photos' regions and
    # captions must reach neither them nor the epoch kept on dev CIDEr.
    cfg = dataclasses.replace(CAPTION_PRESETS["attend-tiny"], select="cider")
    reports, weights = {}, {}
    for name, (root, store) in roots.items():
        reports[name] = train_caption(store, tmp_path / f"{name}.pt", cfg, device="cpu", root=root)
        weights[name] = _weights(tmp_path / f"{name}.pt")
    assert any(k.startswith("w_p.") for k in weights["clean"])  # the attention model, not the full-frame one
    assert reports["clean"]["best"] == reports["poisoned"]["best"]
    assert all(torch.equal(weights["clean"][k], weights["poisoned"][k]) for k in weights["clean"])


def test_poisoned_test_split_changes_nothing_in_the_querybank(roots, tmp_path):
    from vsa_search.models.alignment import AlignModel, save_align
    from vsa_search.train.add_querybank import add_querybank

    vocab = build_flickr8k_vocab(roots["clean"][0], min_count=1)
    torch.manual_seed(0)
    model = save_align(AlignModel(EMBED_PRESETS["tiny"], len(vocab)).eval(), vocab, REGION_PRESETS["tiny"],
                       tmp_path / "m.pt")
    banks = {}
    for name, (root, store) in roots.items():
        rep = add_querybank(model, store, tmp_path / f"{name}.pt", sentences=10, photos=3, dataset=load_flickr8k(root))
        assert rep["train_photos_available"] == 6
        banks[name] = {k: v for k, v in _weights(tmp_path / f"{name}.pt").items() if k.startswith("querybank.")}
    assert "querybank.photo_parts_codes" in banks["clean"]  # the photos as their region vectors
    assert len(banks["clean"]) == 6  # sentences, lengths, mask; the 8-bit vectors, their low ends and steps
    assert all(torch.equal(banks["clean"][k], banks["poisoned"][k]) for k in banks["clean"])


# The shipped presets' own selection paths (not only the tiny ones): the hybrid model with dev-recall early
# stopping, the global baseline's text-only pretraining, and the caption generator kept on dev CIDEr. Only the
# epoch budget shrinks; the vocabulary is built inside the trainer (from the data set given).
@pytest.mark.parametrize("preset", ["default", "global-text"])
def test_poisoned_test_split_changes_nothing_in_the_shipped_embed_presets(roots, tmp_path, preset):
    cfg = dataclasses.replace(EMBED_PRESETS[preset], epochs=2)
    runs = {}
    for name, (root, store) in roots.items():
        res = train_embed(store, tmp_path / f"{name}.pt", cfg, dataset=load_flickr8k(root), min_count=1,
                          device="cpu")
        runs[name] = (res, load_align(tmp_path / f"{name}.pt"), _weights(tmp_path / f"{name}.pt"))
    (clean, m_clean, w_clean), (poisoned, m_poisoned, w_poisoned) = runs["clean"], runs["poisoned"]
    assert m_clean.vocab == m_poisoned.vocab and "zebra" not in m_clean.vocab
    assert clean.history == [dict(h, seconds=c["seconds"]) for h, c in zip(poisoned.history, clean.history)]
    assert clean.best_epoch == poisoned.best_epoch and clean.dev == poisoned.dev
    if cfg.text_pretrain:
        assert m_clean.metrics["text_pretrain_loss"] == m_poisoned.metrics["text_pretrain_loss"]
        assert len(m_clean.metrics["text_pretrain_loss"]) == cfg.text_pretrain
    assert all(torch.equal(w_clean[k], w_poisoned[k]) for k in w_clean)


def test_poisoned_test_split_changes_nothing_in_the_shipped_caption_preset(roots, tmp_path):
    cfg = dataclasses.replace(CAPTION_PRESETS["default"], epochs=2)
    assert cfg.select == "cider"  # the epoch kept is the one of the best dev CIDEr
    reports, weights = {}, {}
    for name, (root, store) in roots.items():
        reports[name] = train_caption(store, tmp_path / f"{name}.pt", cfg, device="cpu", root=root)
        weights[name] = _weights(tmp_path / f"{name}.pt")
    clean, poisoned = reports["clean"], reports["poisoned"]
    assert all("dev_cider" in h for h in clean["history"])
    assert [(h["dev_cider"], h["dev_ppl"]) for h in clean["history"]] == \
        [(h["dev_cider"], h["dev_ppl"]) for h in poisoned["history"]]
    assert clean["best"] == poisoned["best"]
    assert all(torch.equal(weights["clean"][k], weights["poisoned"][k]) for k in weights["clean"])


def test_poisoned_test_split_changes_nothing_in_the_bridge_weight(roots, tmp_path):
    from vsa_search.bridge.weight import SHIPPED_TOLERANCE
    from vsa_search.core.errors import UsageError
    from vsa_search.evaluation.openvocab import tune_weight
    from vsa_search.models.alignment import AlignModel, save_align

    vocab = build_flickr8k_vocab(roots["clean"][0], min_count=1)
    torch.manual_seed(0)
    model = save_align(AlignModel(EMBED_PRESETS["tiny"], len(vocab)).eval(), vocab, REGION_PRESETS["tiny"],
                       tmp_path / "m.pt")
    tuned = {}
    for name, (root, store) in roots.items():
        weight, table = tune_weight(model, store, "dev", dataset=load_flickr8k(root), tolerance=SHIPPED_TOLERANCE)
        assert table["photos"] == 3 and table["sentences"] == 15
        tuned[name] = (weight, table["best"], {w: r["metrics"] for w, r in table["rows"].items()})
    assert tuned["clean"] == tuned["poisoned"]
    with pytest.raises(UsageError, match="never on test"):
        tune_weight(model, roots["clean"][1], "test", dataset=load_flickr8k(roots["clean"][0]))


def test_poisoned_test_split_changes_nothing_in_the_rerank_weight(roots, tmp_path):
    from vsa_search.core.errors import UsageError
    from vsa_search.evaluation.captions import tune_rerank_weight
    from vsa_search.models.alignment import AlignModel, save_align
    from vsa_search.models.captioner import Captioner, save_caption

    vocab = build_flickr8k_vocab(roots["clean"][0], min_count=1)
    torch.manual_seed(0)
    align = save_align(AlignModel(EMBED_PRESETS["tiny"], len(vocab)).eval(), vocab, REGION_PRESETS["tiny"],
                       tmp_path / "align.pt")
    cap = save_caption(Captioner(CAPTION_PRESETS["tiny"], len(vocab)).eval(), vocab, REGION_PRESETS["tiny"],
                       tmp_path / "cap.pt")
    tuned = {}
    for name, (root, store) in roots.items():
        weight, table = tune_rerank_weight(cap, store, "dev", (0.0, 1.0, 100.0), beam=3, device="cpu",
                                           dataset=load_flickr8k(root), rerank_with=align)
        assert table["photos"] == 3 and [r["weight"] for r in table["rows"]] == [0.0, 1.0, 100.0]
        tuned[name] = (weight, table["rows"])
    assert tuned["clean"] == tuned["poisoned"]
    with pytest.raises(UsageError, match="never on test"):
        tune_rerank_weight(cap, roots["clean"][1], "test", dataset=load_flickr8k(roots["clean"][0]),
                           rerank_with=align)


def test_the_rerank_weight_command_refuses_the_test_split(tmp_path):
    from typer.testing import CliRunner

    from vsa_search.cli import app

    res = CliRunner().invoke(app, ["eval", "rerank-weight", "--features", str(tmp_path), "--split", "test"])
    assert res.exit_code != 0 and res.stdout == ""
    assert res.stderr.strip().splitlines() == ["error: choose the re-ranking weight on dev (or train), never on test"]


def test_poisoned_test_split_changes_nothing_in_the_querybank_choice(roots, tmp_path):
    from vsa_search.core.errors import UsageError
    from vsa_search.models.alignment import AlignModel, save_align
    from vsa_search.train.querybank_tune import tune_querybank

    vocab = build_flickr8k_vocab(roots["clean"][0], min_count=1)
    torch.manual_seed(0)
    model = save_align(AlignModel(EMBED_PRESETS["tiny"], len(vocab)).eval(), vocab, REGION_PRESETS["tiny"],
                       tmp_path / "m.pt")
    sizes = ((10, 3, 8), (5, 2, 4))  # the smaller bank's photos in 4 bits
    tuned = {}
    for name, (root, store) in roots.items():
        pick, table = tune_querybank(model, store, "dev", sizes, (1.0, 5.0), (0.5, 1.0), device="cpu",
                                     dataset=load_flickr8k(root))
        assert table["photos"] == 3 and table["sentences"] == 15 and table["train_photos_available"] == 6
        assert len(table["rows"]) == 8 and pick in table["rows"]
        assert [r["bits"] for r in table["rows"]] == [8] * 4 + [4] * 4
        tuned[name] = (pick, table["rows"], table["without_querybank"])
    assert tuned["clean"] == tuned["poisoned"]
    # the cap decides: below the larger bank's file, the pick is among the smaller banks only
    rows = tuned["clean"][1]
    small = min(r["file_bytes"] for r in rows)
    assert small < max(r["file_bytes"] for r in rows)
    capped, _ = tune_querybank(model, roots["clean"][1], "dev", sizes, (1.0, 5.0), (0.5, 1.0), device="cpu",
                               max_bytes=small, dataset=load_flickr8k(roots["clean"][0]))
    assert capped["file_bytes"] == small
    assert capped["mean_recall"] == max(r["mean_recall"] for r in rows if r["file_bytes"] == small)
    with pytest.raises(UsageError, match="never on test"):
        tune_querybank(model, roots["clean"][1], "test", dataset=load_flickr8k(roots["clean"][0]))
    # the command prints the same table and pick
    from typer.testing import CliRunner

    from vsa_search.cli import app

    args = ["eval", "querybank-tune", "--model", str(model), "--features", str(roots["clean"][1]), "--root",
            str(roots["clean"][0]), "--sizes", "10/3,5/2/4", "--betas", "1,5", "--weights", "0.5,1", "--device", "cpu"]
    res = CliRunner().invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.stderr
    got = json.loads(res.stdout)
    assert got["pick"] == json.loads(json.dumps(tuned["clean"][0]))
    text = CliRunner().invoke(app, args).stdout
    pick = got["pick"]
    assert f"pick: {pick['sentences']} sentences, {pick['photos']} photos ({pick['bits']} bits)" in text


def test_a_querybank_tune_row_is_what_its_bank_gives_in_the_model_file(roots, tmp_path):
    """The tune scores the split against each bank once and applies every β and weight to those scores; the
    model file `vsa train querybank` writes with the row's bank gives the row's figures (4-bit vectors too)."""
    from vsa_search.evaluation.metrics import retrieval_metrics
    from vsa_search.evaluation.recall import normalised_scores, split_data
    from vsa_search.models.alignment import AlignModel, save_align
    from vsa_search.train.add_querybank import add_querybank
    from vsa_search.train.querybank_tune import tune_querybank

    root, store = roots["clean"]
    ds = load_flickr8k(root)
    vocab = build_flickr8k_vocab(root, min_count=1)
    torch.manual_seed(0)
    model = save_align(AlignModel(EMBED_PRESETS["tiny"], len(vocab)).eval(), vocab, REGION_PRESETS["tiny"],
                       tmp_path / "m.pt", half=True)  # as the file with the bank will hold it
    _, table = tune_querybank(model, store, "dev", ((10, 3, 4),), (1.0, 5.0), (0.7,), device="cpu", dataset=ds)
    add_querybank(model, store, tmp_path / "b.pt", 10, 3, 5.0, 0.7, dataset=ds, bits=4)
    loaded = load_align(tmp_path / "b.pt")
    data = split_data(loaded, store, ds, "dev")
    _, normalised = normalised_scores(loaded, data, "cpu")
    row = table["rows"][1]
    assert (row["beta"], row["bits"]) == (5.0, 4)
    # the same file but for its name, which torch's zip writes into each entry's path
    assert abs(row["file_bytes"] - (tmp_path / "b.pt").stat().st_size) < 1000
    assert row["metrics"] == retrieval_metrics(normalised, data.sent_image, reps=0)


def test_the_querybank_tune_command_refuses_the_test_split(tmp_path):
    from typer.testing import CliRunner

    from vsa_search.cli import app

    res = CliRunner().invoke(app, ["eval", "querybank-tune", "--features", str(tmp_path), "--split", "test"])
    assert res.exit_code != 0 and res.stdout == ""
    assert res.stderr.strip().splitlines() == ["error: choose the querybank on dev, never on test"]


def test_poisoned_test_split_changes_nothing_in_the_finetuned_cnn_top(roots, tmp_path):
    from vsa_search.core.config import MAP_PRESETS
    from vsa_search.train.finetune import train_finetune
    from vsa_search.vision.trunk import extract_maps

    runs = {}
    for name, (root, store) in roots.items():
        ds = load_flickr8k(root)
        maps = tmp_path / f"maps-{name}"
        extract_maps({r.image_id: r.path for r in ds.records}, maps, MAP_PRESETS["tiny"])
        res = train_finetune(store, maps, tmp_path / f"{name}.pt", EMBED_PRESETS["tiny"], top_lr=1e-3, dataset=ds,
                             min_count=1, epochs=2)
        runs[name] = (res, _weights(tmp_path / f"{name}.pt"))
    (clean, w_clean), (poisoned, w_poisoned) = runs["clean"], runs["poisoned"]
    assert clean.best_epoch == poisoned.best_epoch and clean.dev == poisoned.dev
    assert any(k.startswith("top.") for k in w_clean) and w_clean.keys() == w_poisoned.keys()
    assert all(torch.equal(w_clean[k], w_poisoned[k]) for k in w_clean)


def test_poisoned_test_split_changes_nothing_in_a_model_on_the_tops_features(roots, tmp_path):
    """The shipped recipe after the top: export it, its features from the stored maps, an embedding trained
    on them (`--init` of an ImageNet-feature model): the file, its top included, is the same."""
    from vsa_search.core.config import MAP_PRESETS
    from vsa_search.train.finetune import export_align, train_finetune
    from vsa_search.vision.trunk import extract_maps, extract_with_top

    weights = {}
    for name, (root, store) in roots.items():
        ds = load_flickr8k(root)
        photos = {r.image_id: r.path for r in ds.records}
        maps = tmp_path / f"maps-{name}"
        extract_maps(photos, maps, MAP_PRESETS["tiny"])
        train_finetune(store, maps, tmp_path / f"ft-{name}.pt", EMBED_PRESETS["tiny"], top_lr=1e-3, dataset=ds,
                       min_count=1, epochs=1)
        export_align(tmp_path / f"ft-{name}.pt", tmp_path / f"x-{name}.pt")
        exported = load_align(tmp_path / f"x-{name}.pt")
        top_store = tmp_path / f"top-{name}"
        extract_with_top(photos, top_store, exported.region_config, exported.top, maps=maps, frozen=store)
        train_embed(top_store, tmp_path / f"e-{name}.pt", EMBED_PRESETS["tiny"], init=exported.path, dataset=ds,
                    min_count=1, epochs=1)
        weights[name] = _weights(tmp_path / f"e-{name}.pt")
    assert any(k.startswith("cnn.") for k in weights["clean"]) and weights["clean"].keys() == weights["poisoned"].keys()
    assert all(torch.equal(weights["clean"][k], weights["poisoned"][k]) for k in weights["clean"])


def test_poisoned_test_split_changes_nothing_in_the_generators_prior_and_weight(roots, tmp_path):
    from tests.tiny_align import tiny_captioner
    from vsa_search.models.alignment import AlignModel, save_align
    from vsa_search.train.add_prior import add_prior
    from vsa_search.train.generator_tune import tune_generator

    vocab = build_flickr8k_vocab(roots["clean"][0], min_count=1)
    torch.manual_seed(0)
    model = save_align(AlignModel(EMBED_PRESETS["tiny"], len(vocab)).eval(), vocab, REGION_PRESETS["tiny"],
                       tmp_path / "m.pt")
    generator = tiny_captioner(tmp_path / "g.pt", vocab)
    got = {}
    for name, (root, store) in roots.items():
        ds = load_flickr8k(root)
        rep = add_prior(generator, store, tmp_path / f"{name}-g.pt", photos=4, dataset=ds)
        assert rep["train_photos_available"] == 6
        prior = {k: v for k, v in _weights(tmp_path / f"{name}-g.pt").items() if k.startswith("prior.")}
        res = tune_generator(model, store, tmp_path / f"{name}-g.pt", store, "dev", (0.0, 0.5), (0.0, 0.5),
                             dataset=ds, device="cpu")
        assert (res["photos"], res["sentences"], res["prior_photos"]) == (3, 15, 4)
        got[name] = (prior, res["rows"], res["pick"])
    assert len(got["clean"][0]) == 3  # the 8-bit codes, their low ends and steps
    assert all(torch.equal(got["clean"][0][k], got["poisoned"][0][k]) for k in got["clean"][0])
    assert got["clean"][1:] == got["poisoned"][1:]
