"""`vsa align PHOTO "SENTENCE"` and `vsa align export`: sentence fragments on image regions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import click
import typer

from .. import align, datasets, embedding, images, paths
from ..features import FeatureStore
from .common import VSAGroup, err, out, print_json, progress

DEFAULT_COMMAND = "photo"


class AlignGroup(VSAGroup):
    """`vsa align PHOTO SENTENCE` runs the hidden `photo` command; `vsa align export ...` the
    subcommand. Anything that is not a subcommand name (a photo path, an option) goes to `photo`,
    so a photo literally named `export` must be written `./export`."""

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, Any, list[str]]:
        if args and args[0] not in self.commands:
            return DEFAULT_COMMAND, self.commands[DEFAULT_COMMAND], args
        return super().resolve_command(ctx, args)


app = typer.Typer(cls=AlignGroup, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  # Options given before PHOTO (`vsa align --beta 3 a.jpg "..."`) belong to `photo`.
                  context_settings={"ignore_unknown_options": True},
                  help='Align a sentence\'s fragments to a photo\'s regions: vsa align PHOTO "SENTENCE" [--beta B] '
                       '[--json] [--out fig.png]; or export snippets of a data set with `vsa align export`.')

ModelOpt = Annotated[str, typer.Option("--model", help="Alignment model name or path.")]
BetaOpt = Annotated[float, typer.Option("--beta", min=0.0,
                                        help="Smoothing: reward for consecutive words on one region "
                                             "(0 = each word alone; large = one fragment).")]


IndexOpt = Annotated[str | None, typer.Option(
    "--index", help="Reuse the photo's regions from this photo index (default: the default index, when it "
                    "holds the photo and was built with the same model).")]


def _load_model(name: str) -> embedding.LoadedAlign:
    return embedding.load_align(paths.find_model(name))


@app.command(DEFAULT_COMMAND, hidden=True)
def photo_cmd(
    photo: Annotated[Path, typer.Argument(help="The photo.")],
    sentence: Annotated[str, typer.Argument(help="The sentence to align.")],
    beta: BetaOpt = align.DEFAULT_BETA,
    model: ModelOpt = "align",
    out_png: Annotated[Path | None, typer.Option("--out", help="Draw the fragments' boxes into this image.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the alignment as JSON.")] = False,
    index: IndexOpt = None,
    no_index: Annotated[bool, typer.Option("--no-index", help="Always compute the photo's regions afresh.")] = False,
    bridge: Annotated[bool, typer.Option("--bridge/--no-bridge", help="Also place words through the CNN's "
                                         "ImageNet classes (words outside the model's vocabulary too).")] = True,
) -> None:
    """Align SENTENCE to PHOTO and print its fragments with their boxes and scores."""
    align.sentence_tokens(sentence)  # an empty sentence fails before any model or photo loads
    loaded = _load_model(model)
    found = None if no_index else align.indexed_regions(loaded, photo, index, with_concepts=bridge)
    if found is not None and bridge and found[2] is None:
        found = None  # an index from before concepts: compute the photo's regions (and concepts) afresh
    image = images.load(photo) if found is None or out_png is not None else None
    if found is not None:
        result = align.align_vectors(loaded, found[0], found[1], sentence, beta, found[2] if bridge else None)
        source = f"index {index or 'default'}"
    else:
        result = align.align_photo(loaded, image, sentence, beta, bridge=bridge)  # type: ignore[arg-type]
        source = "photo"
    words = _word_status(loaded, result.tokens, bridge)
    if out_png is not None:
        align.save_image(align.draw_alignment(image, result), out_png)  # type: ignore[arg-type]
    if json_out:
        print_json({"photo": str(photo), "model": str(loaded.path), "regions_from": source, **result.to_dict(),
                    **words, **({"picture": str(out_png)} if out_png else {})})
        return
    for key, what in (("bridged", "outside the model's vocabulary, placed through the CNN's classes"),
                      ("unknown", "unknown to the model and to GloVe")):
        if words.get(key):
            out.print(f"({what}: {', '.join(words[key])})", markup=False)
    for f in result.fragments:
        where = "full image" if f.region == 0 else f"region {f.region}"
        out.print(f"{f.text!r:40} {where:11} box {list(f.box)}  score {f.score:.3f}")
    if out_png is not None:
        err.print(f"wrote {out_png}")


def _word_status(loaded: embedding.LoadedAlign, tokens: list[str], bridge: bool) -> dict[str, Any]:
    """Which words the bridge placed alone, and which no one knows (they stay on the model's <unk>)."""
    from ..concepts import in_glove
    from ..vocab import UNK

    unk = [w for w, i in zip(tokens, loaded.vocab.encode(tokens)) if i == UNK]
    if not bridge:
        return {"unknown": unk}
    return {"bridged": [w for w in unk if in_glove(w)], "unknown": [w for w in unk if not in_glove(w)]}


@app.command("export")
def export_cmd(
    features: Annotated[Path, typer.Option("--features", help="Feature store of the data set's photos.")],
    out_path: Annotated[Path, typer.Option("--out", help="Snippets file to write (JSON lines).")],
    dataset: Annotated[str, typer.Option(help="flickr8k | coco | karpathy")] = "flickr8k",
    root: Annotated[Path | None, typer.Option(help="Data set root (default: the shared Flickr8k).")] = None,
    captions: Annotated[Path | None, typer.Option(help="Captions JSON for coco/karpathy.")] = None,
    split: Annotated[str, typer.Option(help="Which split's sentences (train for training snippets).")] = "train",
    beta: BetaOpt = align.DEFAULT_BETA,
    model: ModelOpt = "align",
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Align every sentence of the split's photos in the feature store; one JSON line per fragment:
    {image_id, sentence_index, region, box, fragment, score, span}."""
    kw = {}
    if captions is not None:
        kw["captions_json" if dataset == "coco" else "dataset_json"] = captions
    records = datasets.load_dataset(dataset, root, **kw).split(split)
    loaded = _load_model(model)
    with FeatureStore(features, readonly=True) as store:
        align.check_store(loaded, store.config)
        have = [r for r in records if r.image_id in store]
        with progress("aligning", len(have)) as advance:
            n = align.write_jsonl(align.snippets(loaded, store, have, beta, on_progress=advance), out_path)
    summary = {"out": str(out_path), "split": split, "photos": len(have), "photos_not_in_store":
               len(records) - len(have), "sentences": sum(len(r.sentences) for r in have), "fragments": n,
               "beta": beta, "model": str(loaded.path)}
    if json_out:
        print_json(summary)
    else:
        out.print(f"{out_path}: {n} fragments from {summary['sentences']} sentences of {len(have)} {split} photos "
                  f"({summary['photos_not_in_store']} not in the feature store)")


# --------------------------------------------------------------------------- region captions

REGION_MODEL = "caption-regions"  # models/caption-regions.pt: trained with `vsa train caption --regions`


def region_caption_run(photos: list[Path], beam: int, model: str | None, max_len: int | None, top: int,
                       out_png: Path | None, device: str | None, json_out: bool, regions: bool) -> None:
    """`vsa caption PHOTO --regions`: a caption for every region of each photo, with its box."""
    from ..captioner import load_caption
    from ..errors import UsageError
    from ..regions import RegionEncoder
    from ..train import pick_device

    if not regions:
        raise UsageError("--out and --top describe regions: add --regions")
    if out_png is not None and len(photos) != 1:
        raise UsageError(f"--out draws one photo; {len(photos)} were given")
    loaded = load_caption(paths.find_model(model or REGION_MODEL), device=pick_device(device))
    encoder = RegionEncoder(loaded.region_config, pick_device(device))
    results = []
    for p in photos:
        image = images.load(p)
        caps = align.region_captions(loaded, encoder.encode_one(image), beam=beam, max_len=max_len, top=top or None)
        results.append({"photo": str(p), "regions": [c.to_dict() for c in caps]})
        if out_png is not None:
            align.save_image(align.draw_region_captions(image, caps), out_png)
    if json_out:
        print_json({"model": str(loaded.path), "beam": beam, "photos": results})
        return
    for r in results:
        out.print(r["photo"], markup=False)
        for c in r["regions"]:
            where = "full image" if c["region"] == 0 else f"region {c['region']}"
            out.print(f"  {where:11} box {c['box']}  {c['caption']}  ({c['logprob']:.2f})", markup=False)
    if out_png is not None:
        err.print(f"wrote {out_png}")


def eval_regions_cmd(
    features: Annotated[Path, typer.Option(help="Feature store with the held-out photos (default region preset).")],
    snippets: Annotated[Path | None, typer.Option(help="Held-out snippets (vsa align export --split test); "
                                                       "default: align the split's sentences here.")] = None,
    region_model: Annotated[str, typer.Option(help="The region generator.")] = REGION_MODEL,
    full_model: Annotated[str, typer.Option(help="The full-frame generator.")] = "caption",
    model: ModelOpt = "align",
    beta: BetaOpt = align.DEFAULT_BETA,
    split: Annotated[str, typer.Option(help="Whose snippets are held out (never train).")] = "test",
    beam: Annotated[int, typer.Option(min=1, help="Beam size.")] = 7,
    device: Annotated[str | None, typer.Option(help="cpu | cuda (default: cuda when present).")] = None,
    show: Annotated[int, typer.Option(min=0, help="Print this many example regions.")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Region generator vs full-frame generator on held-out region snippets: BLEU and CIDEr of each
    model describing each region from its RoI feature and from the region cut out as a photo."""
    from ..errors import UsageError

    if split == "train":
        raise UsageError("the region generator trains on train snippets: evaluate on dev or test")
    with progress("crops, then captions", None, unit="regions") as advance:
        res = align.evaluate_regions(paths.find_model(region_model), paths.find_model(full_model), features,
                                     snippets, paths.find_model(model), beta=beta, beam=beam, split=split,
                                     device=device, on_progress=advance)
    if json_out:
        print_json(res)
        return
    out.print(region_table(res), markup=False)
    for e in res["examples"][:show]:
        out.print(f"{e['region']} {e['box']}  refs: {' | '.join(e['references'])}", markup=False)
        for k, v in e.items():
            if k not in ("region", "box", "references"):
                out.print(f"    {k}: {v}", markup=False)


def region_table(res: dict) -> str:
    cols = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr", "distinct captions"]
    lines = [f"Region captions: {res['regions']} regions of {res['photos']} {res['split']} photos, "
             f"{res['references']} held-out snippets ({res['min_words']}+ words), beam {res['beam']}",
             f"{'':36s}" + "".join(f"{c:>8s}" if c != "distinct captions" else f"{'distinct':>9s}" for c in cols)]
    for name, row in res["rows"].items():
        lines.append(f"{name:36s}" + "".join(f"{row[c]:8.1f}" for c in cols[:-1]) + f"{row[cols[-1]]:9d}")
    if (paper := res.get("paper", {}).get("CIDEr")) is not None:
        lines.append(f"paper, CIDEr: region model {paper['region_model']}, full-frame model "
                     f"{paper['full_frame_model']} ({res['paper']['note']})")
    lines.append(f"snippets: {res['snippets']}")
    return "\n".join(lines)
