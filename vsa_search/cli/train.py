"""`vsa train embed|finetune|export-top|ensemble|querybank|caption|caption-ensemble|generator-prior`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from ..core import config, paths
from ..core.errors import UsageError
from ..train import add_prior as prior
from ..train import add_querybank as bank
from ..train import distributed, train_caption, train_embed
from ..train.embed import embed_config
from .common import CaptionsOpt, DatasetOpt, RootOpt, err, load_dataset_opts, new_app, out, print_json, progress

MinCountOpt = Annotated[int, typer.Option(min=1, help="A training-split word enters the vocabulary when seen this "
                                                      "often (the paper: 5; lower it for a small data set).")]

SlimOpt = Annotated[bool, typer.Option(help="Leave the training state (optimizer, last weights) out of the final "
                                            "file, to ship it: smaller, no longer resumable.")]

ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue the run saved in --out.")]
EpochsOpt = Annotated[int | None, typer.Option(min=1, help="Total epochs (overrides the preset).")]

app = new_app("Train the alignment model (embed), combine and normalise alignment models (ensemble, querybank), "
              "train the caption generator (caption) and combine generators (caption-ensemble).")


@app.command("embed")
def embed_cmd(
    features: Annotated[Path, typer.Option(help="Feature store of the photos (vsa features extract).")],
    out_path: Annotated[Path, typer.Option("--out", help="Model file to write (atomically, every epoch).")],
    preset: Annotated[str, typer.Option(help="tiny | default | paper | global (the baseline) | global-text "
                                             "(baseline with text pretraining).")] = "default",
    dataset: DatasetOpt = "flickr8k",
    root: RootOpt = None,
    captions: CaptionsOpt = None,
    min_count: MinCountOpt = 5,
    init: Annotated[str | None, typer.Option(
        help="Start from this alignment model (file or name, e.g. align): its config replaces --preset, its "
             "vocabulary grows by the new training words.")] = None,
    resume: ResumeOpt = False,
    device: Annotated[str | None, typer.Option(help="cpu | cuda (default: cuda when present).")] = None,
    epochs: EpochsOpt = None,
    optimizer: Annotated[str | None, typer.Option(help="sgd (paper) | adam.")] = None,
    loss: Annotated[str | None, typer.Option(help="sum (paper) | max (hardest negative, VSE++).")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    margin: Annotated[float | None, typer.Option(help="Ranking-loss margin.")] = None,
    hidden: Annotated[int | None, typer.Option(min=1, help="Joint-space size h.")] = None,
    word_dim: Annotated[int | None, typer.Option(min=1, help="Word vector size (GloVe fills the first 50).")
                        ] = None,
    batch_size: Annotated[int | None, typer.Option(min=2, help="Photos per step.")] = None,
    normalize: Annotated[bool | None, typer.Option("--normalize/--no-normalize",
                                                   help="Cosine instead of dot products.")] = None,
    pool: Annotated[str | None, typer.Option(help="sum (paper) | mean over words.")] = None,
    arch: Annotated[str | None, typer.Option(help="brnn (paper) | hybrid (brnn + global term) | global.")] = None,
    word_relu: Annotated[bool | None, typer.Option("--word-relu/--no-word-relu",
                                                   help="ReLU on word vectors s_t (paper).")] = None,
    dropout: Annotated[float | None, typer.Option(min=0.0, max=1.0)] = None,
    feat_norm: Annotated[str | None, typer.Option(help="none | l2: CNN features L2-normalised before W_m.")] = None,
    image_mlp: Annotated[int | None, typer.Option(min=0, help="ReLU layer width before W_m (0: linear).")] = None,
    regions: Annotated[str | None, typer.Option(help="all: full image + proposals (paper) | full: full image only.")
                       ] = None,
    warmup_sum: Annotated[int | None, typer.Option(min=0, help="--loss max: epochs of the sum loss first.")] = None,
    rnn: Annotated[str | None, typer.Option(help="relu (paper's BRNN) | gru.")] = None,
    lr_decay_epoch: Annotated[int | None, typer.Option(min=0, help="Learning rate x0.1 from this epoch (0: never).")
                              ] = None,
    text_pretrain: Annotated[int | None, typer.Option(
        min=0, help="Epochs of text-only pretraining on all training-split captions (0: none).")] = None,
    text_pretrain_lr: Annotated[float | None, typer.Option(help="Learning rate of the text pretraining.")] = None,
    patience: Annotated[int | None, typer.Option(min=1, help="Epochs without dev gain before stopping.")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    max_minutes: Annotated[float | None, typer.Option(help="Stop after the epoch that passes this.")] = None,
    amp: Annotated[bool | None, typer.Option("--amp/--no-amp",
                                             help="bf16/fp16 autocast (default: on for CUDA, off on CPU).")] = None,
    slim: SlimOpt = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Train the alignment model with the ranking loss on a data set's training split (default:
    Flickr8k); early stopping on dev Recall@K.
    Several GPUs: torchrun --nproc-per-node N -m vsa_search train embed ... (batch is per GPU)."""
    # The config options are the parameters named after EmbedConfig fields; locals() is read first.
    given = {k: v for k, v in locals().items() if v is not None}
    overrides = {f.name: given[f.name] for f in dataclasses.fields(config.EmbedConfig) if f.name in given}
    if not distributed.is_main():  # under torchrun only rank 0 speaks
        out.quiet = err.quiet = True
    if resume and set(overrides) - {"epochs"}:
        raise UsageError("--resume continues with the saved config; only --epochs may change")
    init_path = paths.find_model(init) if init else None
    cfg = embed_config(preset, overrides, init_path)
    ds = load_dataset_opts(dataset, root, captions)
    with progress("training", None, unit="steps") as advance:
        result = train_embed(features, out_path, None if resume else cfg, dataset=ds, init=init_path,
                             min_count=min_count, device=device, resume=resume,
                             epochs=cfg.epochs if (epochs or not resume) else None, max_minutes=max_minutes,
                             amp=amp, keep_train_state=not slim, on_epoch=_embed_epoch_line,
                             on_step=lambda epoch, step, steps, loss_: advance(
                                 1, description=f"epoch {epoch} step {step}/{steps} loss {loss_:.3f}"))
    if not distributed.is_main():
        return
    summary = {"model": str(result.path), "epochs": result.epoch, "best_epoch": result.best_epoch,
               "dev_mean_recall": round(result.best_metric, 2), "dev": result.dev, "stopped": result.stopped,
               "seconds": round(result.seconds, 1)}
    if json_out:
        print_json(summary)
        return
    out.print(f"{result.path}: best epoch {result.best_epoch} of {result.epoch} "
              f"(dev mean R@1/5/10 {result.best_metric:.1f}), stopped: {result.stopped}, "
              f"{result.seconds:.0f}s")


def _embed_epoch_line(row: dict) -> None:
    dev = f" dev R@1/5/10 mean {row['dev_mean_recall']:.2f}" if "dev_mean_recall" in row else ""
    err.print(f"epoch {row['epoch']}: loss {row['loss']:.3f}{dev} ({row['seconds']:.0f}s)")


@app.command("finetune")
def finetune_cmd(
    features: Annotated[Path, typer.Option(help="Feature store of the photos (their boxes; vsa features extract).")],
    maps: Annotated[Path, typer.Option(help="Map store of the same photos (vsa features maps).")],
    out_path: Annotated[Path, typer.Option("--out", help="Model file to write (atomically, every epoch).")],
    preset: Annotated[str, typer.Option(help="Embedding preset (as vsa train embed) when no --init.")] = "global",
    init: Annotated[str | None, typer.Option(help="Start from this alignment model (file or name), trained on the "
                                                  "same features, or carrying a fine-tuned top (its top is then "
                                                  "the start too); its config replaces --preset.")] = None,
    dataset: DatasetOpt = "flickr8k",
    root: RootOpt = None,
    captions: CaptionsOpt = None,
    min_count: MinCountOpt = 5,
    resume: ResumeOpt = False,
    epochs: EpochsOpt = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate of the embedding.")] = None,
    top_lr: Annotated[float, typer.Option(min=0.0, help="Learning rate of the CNN top (0: frozen).")] = 3e-5,
    word_dim: Annotated[int | None, typer.Option(min=1, help="Word vector size (no --init).")] = None,
    lr_decay_epoch: Annotated[int | None, typer.Option(min=0, help="Learning rates x0.1 from this epoch (0: never).")
                              ] = None,
    ensemble_loss: Annotated[str | None, typer.Option(help="An ensemble's loss: whole (of its summed score) | "
                                                           "members (each member's own, summed).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Train the embedding together with the CNN's top (the stages after the stored maps) with the
    ranking loss; early stopping on dev Recall@K."""
    from ..train.finetune import train_finetune

    changes = {k: v for k, v in {"epochs": epochs, "lr": lr, "word_dim": word_dim, "lr_decay_epoch": lr_decay_epoch,
                                 "ensemble_loss": ensemble_loss}.items() if v is not None}
    if resume and set(changes) - {"epochs"}:
        raise UsageError("--resume continues with the saved config; only --epochs may change")
    init_path = paths.find_model(init) if init else None
    cfg = embed_config(preset, changes, init_path)
    with progress("training", None, unit="steps") as advance:
        result = train_finetune(features, maps, out_path, None if resume else cfg, top_lr=top_lr, init=init_path,
                                dataset=load_dataset_opts(dataset, root, captions), min_count=min_count,
                                resume=resume, epochs=epochs or (None if resume else cfg.epochs),
                                on_step=lambda e, s, n, loss: advance(1, description=f"epoch {e} step {s}/{n} "
                                                                                     f"loss {loss:.3f}"),
                                on_epoch=_embed_epoch_line)
    summary = {"model": str(result.path), "epochs": result.epoch, "best_epoch": result.best_epoch,
               "dev_mean_recall": round(result.best_metric, 2), "dev": result.dev, "stopped": result.stopped,
               "seconds": round(result.seconds, 1)}
    if json_out:
        print_json(summary)
        return
    out.print(f"{result.path}: best epoch {result.best_epoch} of {result.epoch} "
              f"(dev mean R@1/5/10 {result.best_metric:.2f}), stopped: {result.stopped}, {result.seconds:.0f}s")


@app.command("export-top")
def export_top_cmd(
    model: Annotated[Path, typer.Option(help="A fine-tuning run's file (vsa train finetune).")],
    out_path: Annotated[Path, typer.Option("--out", help="Alignment model file to write (float16, atomically).")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Write a fine-tuned run as an ordinary alignment model that carries its CNN top: its extractor
    names the top, so its features need their own store (vsa features extract --model OUT)."""
    from ..train.finetune import export_align

    summary = export_align(model, out_path)
    if json_out:
        print_json(summary)
        return
    out.print(f"{out_path}: {model} with CNN top {summary['top']} (extractor {summary['extractor']})")


@app.command("ensemble")
def ensemble_cmd(
    base: Annotated[Path, typer.Option(help="A hybrid alignment model (vsa train embed --preset default).")],
    member: Annotated[list[Path], typer.Option(help="A global baseline to add (repeat the option).")],
    out_path: Annotated[Path, typer.Option("--out", help="Model file to write (atomically).")],
    flip: Annotated[bool, typer.Option("--flip", help="Read every photo with test-time flips: each region's "
                                       "features averaged with its mirror image's (one more CNN pass).")] = False,
    extra_size: Annotated[list[int] | None, typer.Option(min=32, help="Read every photo at this input size too "
                                                         "(repeat the option): each region's features averaged "
                                                         "over the sizes (one more CNN pass each).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """One model scoring base + every member (S = S_base + Σ S_member), usable wherever a model is."""
    from ..train.ensemble import write_align_ensemble

    summary = write_align_ensemble(base, member, out_path, flip=flip, extra_sizes=tuple(extra_size or ()))
    if json_out:
        print_json(summary)
        return
    out.print(f"{out_path}: {base} + {len(member)} global members ({summary['out_dim']}-d vectors)")


@app.command("ensemble-part")
def ensemble_part_cmd(
    model: Annotated[str, typer.Option(help="An alignment ensemble (vsa train ensemble), file or name.")],
    part: Annotated[int, typer.Option(min=0, help="0: its hybrid model; k: its k-th global member.")],
    out_path: Annotated[Path, typer.Option("--out", help="Model file to write (atomically).")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """One part of an ensemble as a model of its own (float16, with its CNN top, without the querybank)."""
    from ..train.ensemble import write_align_part

    summary = write_align_part(model, part, out_path)
    if json_out:
        print_json(summary)
        return
    out.print(f"{out_path}: part {part} ({summary['arch']}) of {summary['from']}")


@app.command("querybank")
def querybank_cmd(
    model: Annotated[str, typer.Option(help="Alignment model file or name.")],
    features: Annotated[Path, typer.Option(help="Feature store (vsa features extract) holding the training photos.")],
    out_path: Annotated[Path, typer.Option("--out", help="Model file to write (atomically).")],
    dataset: DatasetOpt = "flickr8k",
    root: RootOpt = None,
    captions: CaptionsOpt = None,
    sentences: Annotated[int, typer.Option(min=1, help="Training sentences in the bank.")] = bank.DEFAULT_SENTENCES,
    photos: Annotated[int, typer.Option(min=1, help="Training photos in the bank.")] = bank.DEFAULT_PHOTOS,
    beta: Annotated[float, typer.Option(help="Softmax temperature β of the normalisation.")] = bank.DEFAULT_BETA,
    weight: Annotated[float, typer.Option(help="How much of each offset is subtracted "
                                               "(0: none).")] = bank.DEFAULT_WEIGHT,
    seed: Annotated[int, typer.Option(help="Seed of the draw from the training split.")] = 0,
    bits: Annotated[int, typer.Option(help="Bits of the bank photos' region vectors in the file: 8, or 4 for "
                                           "twice the photos.")] = bank.DEFAULT_BITS,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Add querybank normalisation to a model: scores are lowered for photos (and sentences) that match
    a bank of training sentences (photos) well, so that a few photos stop coming up for every query."""
    summary = bank.add_querybank(model, features, out_path, sentences, photos, beta, weight, seed,
                                 dataset=load_dataset_opts(dataset, root, captions), bits=bits)
    if json_out:
        print_json(summary)
        return
    out.print(f"{out_path}: {summary['from']} with a querybank of {summary['sentences']} training sentences and "
              f"{summary['photos']} training photos ({bits}-bit vectors; β {beta}, weight {weight})")


@app.command("generator-prior")
def generator_prior_cmd(
    model: Annotated[str, typer.Option(help="Caption model file or name.")],
    features: Annotated[Path, typer.Option(help="The generator's feature store holding the training photos.")],
    out_path: Annotated[Path, typer.Option("--out", help="Model file to write (atomically).")],
    dataset: DatasetOpt = "flickr8k",
    root: RootOpt = None,
    captions: CaptionsOpt = None,
    photos: Annotated[int, typer.Option(min=1, help="Training photos of the prior.")] = prior.PRIOR_PHOTOS,
    regions: Annotated[int, typer.Option(min=1, help="Regions kept of each (the full frame "
                                                     "first).")] = prior.PRIOR_REGIONS,
    seed: Annotated[int, typer.Option(help="Seed of the draw from the training split.")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Store training photos in a caption model, over which a sentence's mean probability is taken when the
    generator re-ranks retrieval (`vsa eval recall --generator`, `vsa search --image`)."""
    summary = prior.add_prior(model, features, out_path, photos, regions, seed,
                              dataset=load_dataset_opts(dataset, root, captions))
    if json_out:
        print_json(summary)
        return
    out.print(f"{out_path}: {summary['from']} with {summary['photos']} training photos as its prior", markup=False)


@app.command("caption-ensemble")
def caption_ensemble_cmd(
    member: Annotated[list[str], typer.Option(help="A trained caption model (repeat the option).")],
    out_path: Annotated[Path, typer.Option("--out", help="Model file to write (atomically).")],
    rerank_weight: Annotated[float | None, typer.Option(min=0.0, help="The re-ranking weight this model asks for "
                                                                      "(choose it on dev).")] = None,
    length_norm: Annotated[float | None, typer.Option(min=0.0, help="The length normalisation it ranks sentences "
                                                                    "by (chosen on dev with the weight).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """One caption model whose word distribution at each step is the mean of its members' (float16 file)."""
    from ..train.ensemble import write_caption_ensemble

    summary = write_caption_ensemble(member, out_path, rerank_weight, length_norm)
    if json_out:
        print_json(summary)
        return
    out.print(f"{out_path}: an ensemble of {summary['members']} caption models")


@app.command("caption")
def train_caption_cmd(
    features: Annotated[Path, typer.Option(help="Feature store (vsa features extract) of the data set's photos.")],
    out_path: Annotated[Path, typer.Option("--out", help="Model file to write (rewritten every epoch).")],
    preset: Annotated[str, typer.Option(help="Model preset: " + ", ".join(config.CAPTION_PRESETS))] = "default",
    dataset: DatasetOpt = "flickr8k",
    root: RootOpt = None,
    captions: CaptionsOpt = None,
    min_count: MinCountOpt = 5,
    cell: Annotated[str | None, typer.Option(help="rnn (the paper's) | lstm | attend (default: the preset's).")] = None,
    optimizer: Annotated[str | None, typer.Option(help="rmsprop (the paper's) | adam.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate (default: the preset's).")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Most epochs (early stopping may end sooner).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run saved in --out.")] = False,
    slim: SlimOpt = False,
    device: Annotated[str | None, typer.Option(help="cpu | cuda (default: cuda when present).")] = None,
    amp: Annotated[bool | None, typer.Option("--amp/--no-amp",
                                             help="bf16/fp16 autocast (default: on for CUDA, off on CPU).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    regions: Annotated[Path | None, typer.Option(help="Snippets (vsa align export --split train) to train on "
                                                      "too: the region generator.")] = None,
    init: Annotated[str | None, typer.Option(help="Start from this caption model (file or name, e.g. caption; "
                                                  "fine-tune): its vocabulary grows by the new training words.")
                    ] = None,
) -> None:
    """Train the caption generator on full-image features and the training sentences of a data set
    (default: Flickr8k); early stopping on dev perplexity or CIDEr, as the preset says; the best epoch's
    weights are saved in --out after every epoch.
    With --regions, region snippets (region feature, sentence fragment) are training pairs too."""
    cfg = config.preset(config.CAPTION_PRESETS, preset)
    changes = {k: v for k, v in {"cell": cell, "optimizer": optimizer, "lr": lr, "epochs": epochs}.items()
               if v is not None}
    cfg = dataclasses.replace(cfg, **changes)
    # Batches per epoch are known only once the store is read; the bar's total grows with them.
    with progress("training", None, unit="batches") as advance:
        report = train_caption(features, out_path, cfg, resume=resume, device=device, keep_train_state=not slim,
                               amp=amp, on_batch=advance, on_epoch=lambda r: err.print(_epoch_line(r), highlight=False),
                               regions=regions, init=paths.find_model(init) if init else None,
                               dataset=load_dataset_opts(dataset, root, captions), min_count=min_count)
    if json_out:
        print_json(report)
        return
    b = report["best"]
    cider = f", dev CIDEr {b['dev_cider']:.1f}" if "dev_cider" in b else ""
    out.print(f"{out_path}: best epoch {b['epoch']} (perplexity {b['dev_ppl']:.2f}{cider}), "
              f"{len(report['history'])} epochs this run, {report['seconds']:.0f} s on {report['device']}"
              + (", stopped early" if report["stopped_early"] else ""))


def _epoch_line(r: dict) -> str:
    ppl = f"dev perplexity {r['dev_ppl']:.2f}" if "dev_ppl" in r else f"train perplexity {r['train_ppl']:.2f}"
    cider = f", dev CIDEr {r['dev_cider']:.1f}" if "dev_cider" in r else ""
    return f"epoch {r['epoch']}: train loss {r['train_loss']:.3f}, {ppl}{cider}, {r['seconds']:.0f} s"
