"""`vsa align PHOTO "SENTENCE"` and `vsa align export`: sentence fragments on image regions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import click
import typer

from ..align.aligner import align_photo, align_vectors, draw_alignment, sentence_tokens
from ..align.mrf import DEFAULT_BETA
from ..align.snippets import snippets, write_jsonl
from ..bridge.align import word_status
from ..core import paths
from ..data import datasets
from ..index.lookup import find_photo
from ..models.alignment import LoadedAlign, load_align
from ..vision import images
from ..vision.draw import save_image
from ..vision.features import FeatureStore, require_extractor
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
    "--index", help="Reuse the photo's regions from this photo index (default: the first index that holds the "
                    "photo and was built with the same model, the default index first).")]


def _load_model(name: str) -> LoadedAlign:
    return load_align(paths.find_model(name))


@app.command(DEFAULT_COMMAND)
def photo_cmd(
    photo: Annotated[Path, typer.Argument(help="The photo.")],
    sentence: Annotated[str, typer.Argument(help="The sentence to align.")],
    beta: BetaOpt = DEFAULT_BETA,
    model: ModelOpt = paths.ALIGN_MODEL,
    out_png: Annotated[Path | None, typer.Option("--out", help="Draw the fragments' boxes into this image.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the alignment as JSON.")] = False,
    index: IndexOpt = None,
    no_index: Annotated[bool, typer.Option("--no-index", help="Always compute the photo's regions afresh.")] = False,
    bridge: Annotated[bool, typer.Option("--bridge/--no-bridge", help="Also place words through the CNN's "
                                         "ImageNet classes (words outside the model's vocabulary too).")] = True,
) -> None:
    """Align SENTENCE to PHOTO and print its fragments with their boxes and scores."""
    sentence_tokens(sentence)  # an empty sentence fails before any model or photo loads
    loaded = _load_model(model)
    found = None if no_index else find_photo(loaded, photo, index, with_concepts=bridge)
    if found is not None and bridge and found.concepts is None:
        found = None  # an index from before concepts: compute the photo's regions (and concepts) afresh
    if found is not None:
        result = align_vectors(loaded, found.boxes, found.vectors, sentence, beta, found.concepts)
        source = f"index {found.index}"
    else:  # decoded as an index build decodes it: the same regions as the index would hold
        result = align_photo(loaded, photo, sentence, beta, bridge=bridge)
        source = "photo"
    words = word_status(loaded, result.tokens, bridge)
    if out_png is not None:  # the full photo for the picture only; the boxes are in its coordinates
        save_image(draw_alignment(images.load(photo), result), out_png)
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


@app.command("export")
def export_cmd(
    features: Annotated[Path, typer.Option("--features", help="Feature store of the data set's photos.")],
    out_path: Annotated[Path, typer.Option("--out", help="Snippets file to write (JSON lines).")],
    dataset: Annotated[str, typer.Option(help="flickr8k | coco | karpathy")] = "flickr8k",
    root: Annotated[Path | None, typer.Option(help="Data set root (default: the shared Flickr8k).")] = None,
    captions: Annotated[Path | None, typer.Option(help="Captions JSON for coco/karpathy.")] = None,
    split: Annotated[str, typer.Option(help="Which split's sentences (train for training snippets).")] = "train",
    beta: BetaOpt = DEFAULT_BETA,
    model: ModelOpt = paths.ALIGN_MODEL,
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
        require_extractor(store.config, loaded.region_config, features, loaded.path)
        have = [r for r in records if r.image_id in store]
        words = [0]

        def counted(rows: Any) -> Any:
            for row in rows:
                words[0] += row["span"][1] - row["span"][0]
                yield row

        with progress("aligning", len(have)) as advance:
            n = write_jsonl(counted(snippets(loaded, store, have, beta, on_progress=advance)), out_path)
    sentences = sum(len(r.sentences) for r in have)
    summary = {"out": str(out_path), "split": split, "photos": len(have), "photos_not_in_store":
               len(records) - len(have), "sentences": sentences, "fragments": n,
               "fragments_per_sentence": round(n / max(sentences, 1), 2),
               "words_per_fragment": round(words[0] / max(n, 1), 2), "beta": beta, "model": str(loaded.path)}
    if json_out:
        print_json(summary)
    else:
        out.print(f"{out_path}: {n} fragments from {sentences} sentences of {len(have)} {split} photos "
                  f"({summary['photos_not_in_store']} not in the feature store): {summary['fragments_per_sentence']} "
                  f"fragments of {summary['words_per_fragment']} words per sentence")
