"""Sentence fragments to image regions (paper Sec. 3.1.4).

Each word j of a sentence picks a region a_j; the assignment maximises

    E(a) = Σ_j unary(j, a_j) + β · Σ_j [a_j == a_{j+1}],   unary(j, i) = v_i · s_j

a chain MRF solved exactly by Viterbi dynamic programming. β trades per-word accuracy for longer
fragments: β = 0 is each word's own best region, a large β puts the whole sentence on one region.
Consecutive words on one region form a fragment; fragments of training sentences become the
(region, snippet) pairs that the region caption generator learns from."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .embedding import LoadedAlign
from .errors import ModelError, StoreError, UsageError
from .regions import RegionEncoder, RegionFeatures
from .text import tokenize

# In units of one word's v_i · s_t: cosine for the shipped model, where per-word region scores differ by
# ~0.015 (median top-1 vs top-2). On 100 train photos, 500 sentences: β = 0 gives 3.9 fragments of 2.7 words
# per sentence, 0.02 gives 2.4 of 4.5, 0.1 gives 1.6 of 6.8, 1.0 gives one fragment (the whole sentence).
DEFAULT_BETA = 0.02

# --------------------------------------------------------------------------- the MRF


def check_beta(beta: float) -> float:
    beta = float(beta)
    # A negative β would reward switching regions; the DP below relies on β >= 0.
    if not np.isfinite(beta) or beta < 0:
        raise UsageError(f"beta must be a finite number >= 0, got {beta:g}")
    return beta


def align_words(unary: np.ndarray | torch.Tensor, beta: float) -> np.ndarray:
    """Exact MAP assignment of the chain MRF: unary (N, R) -> region per word (N,) int64.

    Viterbi in O(N·R): with a reward only for staying, the best way into region r is either the
    best previous state overall (switching, no bonus) or r itself plus β, so no R×R table is needed.
    Ties go to the lowest region index (and to staying), which keeps results deterministic."""
    beta = check_beta(beta)
    u = unary.detach().cpu().numpy() if isinstance(unary, torch.Tensor) else np.asarray(unary)
    u = u.astype(np.float64)
    if u.ndim != 2:
        raise ValueError(f"unary must be (N, R), got shape {u.shape}")
    n, r = u.shape
    if n == 0:
        return np.zeros(0, np.int64)
    if r == 0:
        raise ValueError("no regions to align to")
    dp = u[0].copy()  # (R,): best energy of words 0..j ending on each region
    back = np.zeros((n, r), np.int64)  # back[j, r]: region of word j-1 on the best path to (j, r)
    regions = np.arange(r)
    for j in range(1, n):
        best_prev = int(np.argmax(dp))
        stay = dp + beta  # (R,)
        keep = stay >= dp[best_prev]
        back[j] = np.where(keep, regions, best_prev)
        dp = u[j] + np.where(keep, stay, dp[best_prev])
    a = np.empty(n, np.int64)
    a[-1] = int(np.argmax(dp))
    for j in range(n - 1, 0, -1):
        a[j - 1] = back[j, a[j]]
    return a


def energy(unary: np.ndarray, assignment: np.ndarray, beta: float) -> float:
    """E(a) of one assignment (what `align_words` maximises)."""
    u = np.asarray(unary, np.float64)
    a = np.asarray(assignment)
    return float(u[np.arange(len(a)), a].sum() + beta * np.sum(a[1:] == a[:-1]))


# --------------------------------------------------------------------------- fragments


@dataclass(frozen=True)
class Fragment:
    text: str  # the fragment's words, space-joined (tokenized: lowercase alphanumerics)
    region: int  # index into the image's regions (0 = the full image)
    box: tuple[int, int, int, int]  # xyxy pixels
    score: float  # mean v_i · s_t over the fragment's words
    start: int  # word span [start, end) in the tokenized sentence
    end: int

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["box"] = list(self.box)
        return d


def fragments(tokens: list[str], assignment: np.ndarray, boxes: np.ndarray, unary: np.ndarray) -> list[Fragment]:
    """Group runs of consecutive words on the same region into fragments, in sentence order."""
    if len(tokens) != len(assignment):
        raise ValueError(f"{len(tokens)} tokens but {len(assignment)} assigned regions")
    u = np.asarray(unary, np.float64)
    out: list[Fragment] = []
    start = 0
    for j in range(1, len(tokens) + 1):
        if j == len(tokens) or assignment[j] != assignment[start]:
            i = int(assignment[start])
            out.append(Fragment(" ".join(tokens[start:j]), i, tuple(int(x) for x in boxes[i]),  # type: ignore[arg-type]
                                float(u[start:j, i].mean()), start, j))
            start = j
    return out


# --------------------------------------------------------------------------- with the model


@dataclass
class Alignment:
    sentence: str
    tokens: list[str]
    assignment: np.ndarray  # (N,) region per word
    unary: np.ndarray  # (N, R) v_i · s_t
    boxes: np.ndarray  # (R, 4) xyxy, row 0 = full image
    fragments: list[Fragment]
    beta: float

    def to_dict(self) -> dict[str, Any]:
        return {"sentence": self.sentence, "tokens": self.tokens, "beta": self.beta,
                "image_size": [int(self.boxes[0][2]), int(self.boxes[0][3])],
                "regions": [int(i) for i in self.assignment],
                "fragments": [f.to_dict() for f in self.fragments]}


def sentence_tokens(sentence: str) -> list[str]:
    tokens = tokenize(sentence)
    if not tokens:
        raise UsageError("the sentence has no words to align")
    return tokens


def _check_arch(loaded: LoadedAlign) -> int:
    """The width of the region-word part of the model's vectors. A "hybrid" model appends a global
    term (the same for every region) after the first `hidden` dimensions; alignment ignores it."""
    if getattr(loaded.config, "arch", "brnn") not in ("brnn", "hybrid"):
        raise ModelError(f"{loaded.path}: a {loaded.config.arch} model has no region-word scores to align with")
    return loaded.config.hidden


@torch.inference_mode()
def region_vectors(loaded: LoadedAlign, features: np.ndarray) -> np.ndarray:
    """(R, D) CNN features -> (R, h) region vectors v_i (what a photo index stores)."""
    h = _check_arch(loaded)
    device = next(loaded.model.parameters()).device
    feats = torch.from_numpy(np.asarray(features, np.float32)).to(device)[None]  # (1, R, D)
    return loaded.model.encode_regions(feats)[0, :, :h].float().cpu().numpy()


@torch.inference_mode()
def word_vectors(loaded: LoadedAlign, token_lists: list[list[str]]) -> list[np.ndarray]:
    """Each sentence's word vectors s_t, (N_k, h); the sentences run through the BRNN as one batch."""
    h = _check_arch(loaded)
    device = next(loaded.model.parameters()).device
    lengths = torch.tensor([len(t) for t in token_lists], dtype=torch.long)
    ids = torch.zeros(len(token_lists), int(lengths.max()), dtype=torch.long)  # (B, T), PAD = 0
    for k, t in enumerate(token_lists):
        ids[k, : len(t)] = torch.tensor(loaded.vocab.encode(t), dtype=torch.long)
    s = loaded.model.encode_words(ids.to(device), lengths.to(device))[..., :h]  # (B, T, h)
    if getattr(loaded.config, "pool", "sum") == "mean":
        # Undo the model's 1/length scaling: β is in units of one word's v_i · s_t, whatever the length.
        s = s * lengths.to(device, s.dtype)[:, None, None]
    s = s.float().cpu().numpy()
    return [s[k, : len(t)] for k, t in enumerate(token_lists)]


def unaries(loaded: LoadedAlign, features: np.ndarray, token_lists: list[list[str]],
            vectors: np.ndarray | None = None) -> list[np.ndarray]:
    """v_i · s_t of one image's regions against each sentence: a list of (N_k, R) arrays.
    `features` (R, D) are projected once; or pass the region vectors (R, h) themselves."""
    v = region_vectors(loaded, features) if vectors is None else np.asarray(vectors, np.float32)
    v = v[:, : _check_arch(loaded)]  # stored vectors of a hybrid model carry the global term too
    return [s @ v.T for s in word_vectors(loaded, token_lists)]


def align_vectors(loaded: LoadedAlign, boxes: np.ndarray, vectors: np.ndarray, sentence: str,
                  beta: float = DEFAULT_BETA, concepts: Any = None) -> Alignment:
    """Align one sentence to region vectors v_i (R, h) already projected by the model (an index's).
    With the regions' `concepts` (concepts.Concepts), words also reach regions through the CNN's
    classes, and words outside the model's vocabulary through them alone (openvocab.align_unary)."""
    beta = check_beta(beta)
    tokens = sentence_tokens(sentence)
    u = unaries(loaded, np.zeros((0, 0)), [tokens], vectors=vectors)[0]
    if concepts is not None:
        from .openvocab import align_unary

        u = align_unary(loaded, tokens, u, concepts)[0]
    a = align_words(u, beta)
    return Alignment(sentence, tokens, a, u, boxes, fragments(tokens, a, boxes, u), beta)


def align_features(loaded: LoadedAlign, regions: RegionFeatures, sentence: str,
                   beta: float = DEFAULT_BETA, bridge: bool = False) -> Alignment:
    """Align one sentence to precomputed region features (CNN features, as the feature store holds);
    bridge=True adds the concept bridge (the regions' classes come from the same features)."""
    concepts = None
    if bridge:
        from .concepts import from_features

        concepts = from_features(regions.features, backbone=loaded.region_config.backbone)
    return align_vectors(loaded, regions.boxes, region_vectors(loaded, regions.features), sentence, beta, concepts)


def align_photo(loaded: LoadedAlign, image_or_features: Image.Image | RegionFeatures, sentence: str,
                beta: float = DEFAULT_BETA, encoder: RegionEncoder | None = None, bridge: bool = False) -> Alignment:
    """Align a sentence to a photo (its regions are proposed and encoded with the model's own
    region config) or to region features already computed for it."""
    check_beta(beta)
    sentence_tokens(sentence)  # fail on an empty sentence before running the CNN
    if isinstance(image_or_features, RegionFeatures):
        regions = image_or_features
    else:
        encoder = encoder or RegionEncoder(loaded.region_config)
        regions = encoder.encode_one(image_or_features)
    return align_features(loaded, regions, sentence, beta, bridge)


def indexed_regions(loaded: LoadedAlign, photo: str | Path, name: str | Path | None = None,
                    with_concepts: bool = False) -> tuple[Any, ...] | None:
    """(boxes (R, 4), region vectors (R, h)) of a photo from a photo index, or None when the index
    cannot vouch for them: no default index, built with another model, photo not in it, or the
    file changed since (size or mtime). A named index that does not exist is an error.
    with_concepts=True appends the regions' stored concepts (None for an index built before them)."""
    from . import index as photo_index

    try:
        st = Path(photo).stat()
    except OSError:
        return None
    if name is None and photo_index.Location(photo_index.resolve(None)).current() is None:
        return None
    with photo_index.open_index(name) as ix:
        if ix.manifest.get("model", {}).get("fingerprint") != loaded.fingerprint:
            return None
        # Items are stored sorted by key (the absolute path), so binary search finds the photo.
        key = str(Path(photo).absolute())
        lo, hi = 0, len(ix)
        while lo < hi:
            mid = (lo + hi) // 2
            if ix.record(mid)["key"] < key:
                lo = mid + 1
            else:
                hi = mid
        if lo == len(ix):
            return None
        rec = ix.record(lo)
        if rec["key"] != key or rec.get("size") != st.st_size or rec.get("mtime_ns") != st.st_mtime_ns:
            return None
        found = ix.boxes(lo).copy(), ix.vectors([lo])[0].astype(np.float32)
        if with_concepts:
            from .concepts import Concepts

            blob = ix.concepts_bytes([lo])[0]
            return (*found, Concepts.from_bytes(blob) if blob is not None else None)
        return found


# --------------------------------------------------------------------------- snippet export


def check_store(loaded: LoadedAlign, store_config: Any) -> None:
    """A model only understands features from the extractor it was trained on."""
    want = loaded.region_config.extractor_id()
    have = store_config.extractor_id()
    if want != have:
        raise StoreError(f"feature store made by extractor {have}, but the model was trained on {want}")


def snippets(loaded: LoadedAlign, store: Any, records: list[Any], beta: float = DEFAULT_BETA,
             on_progress: Callable[[int], None] | None = None) -> Iterator[dict[str, Any]]:
    """Every sentence of every record whose photo is in the feature store, aligned to it:
    one dict {image_id, sentence_index, region, box, fragment, score, span} per fragment."""
    beta = check_beta(beta)
    check_store(loaded, store.config)
    for rec in records:
        if rec.image_id in store:
            regions = store.get(rec.image_id)
            kept = [(k, tokenize(s)) for k, s in enumerate(rec.sentences)]
            kept = [(k, t) for k, t in kept if t]
            us = unaries(loaded, regions.features, [t for _, t in kept]) if kept else []
            for (k, tokens), u in zip(kept, us):
                for f in fragments(tokens, align_words(u, beta), regions.boxes, u):
                    yield {"image_id": rec.image_id, "sentence_index": k, "region": f.region,
                           "box": list(f.box), "fragment": f.text, "score": round(f.score, 5),
                           "span": [f.start, f.end]}
        if on_progress:
            on_progress(1)


def write_jsonl(rows: Iterator[dict[str, Any]], path: str | Path) -> int:
    """Write rows as JSON lines atomically (temp file, then rename); returns the row count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    n = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
                n += 1
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n


def read_snippets(path: str | Path) -> list[dict[str, Any]]:
    from .errors import DatasetError

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such snippets file")
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DatasetError(f"{path}:{n}: not JSON ({e.msg})") from None
    return rows


# --------------------------------------------------------------------------- drawing

PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40)]


def draw_boxes(image: Image.Image, labelled: list[tuple[tuple[int, int, int, int], str]],
               min_side: int = 480) -> Image.Image:
    """A copy of `image` with each (box, label) drawn in its own colour, the label on a filled tab
    at the box's top-left. Small photos are enlarged first (to `min_side`) so labels stay legible."""
    from PIL import ImageDraw, ImageFont

    scale = max(1.0, min_side / min(image.size))
    im = image.convert("RGB")
    if scale > 1:
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.LANCZOS)
    else:
        im = im.copy()
    d = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=max(12, round(min(im.size) / 30)))
    width = max(2, round(min(im.size) / 160))
    rects = []
    for k, (box, _) in enumerate(labelled):
        inset = k % 4 * width  # nested boxes (the full image among them) stay distinguishable
        x0, y0, x1, y1 = (round(v * scale) for v in box)
        rects.append((x0 + inset, y0 + inset, max(x0 + inset, x1 - 1 - inset), max(y0 + inset, y1 - 1 - inset)))
        d.rectangle(rects[-1], outline=PALETTE[k % len(PALETTE)], width=width)
    tabs: list[tuple[int, int, int, int]] = []
    for k, ((_, label), (x0, y0, _, _)) in enumerate(zip(labelled, rects)):
        c = PALETTE[k % len(PALETTE)]
        left, top, right, bottom = d.textbbox((0, 0), label, font=font)
        w, h = right - left + 6, bottom - top + 6
        tx, ty = min(x0, max(0, im.width - w)), y0
        # Labels of boxes sharing a corner would overwrite each other: stack them downwards.
        while any(tx < q[2] and q[0] < tx + w and ty < q[3] and q[1] < ty + h for q in tabs):
            ty += h
        ty = min(ty, max(0, im.height - h))
        tabs.append((tx, ty, tx + w, ty + h))
        d.rectangle(tabs[-1], fill=c)
        d.text((tx + 3 - left, ty + 3 - top), label, fill=(0, 0, 0) if sum(c) > 380 else (255, 255, 255), font=font)
    return im


def draw_alignment(image: Image.Image, alignment: Alignment) -> Image.Image:
    """Each fragment's box labelled with its text (fragments on one region share a box)."""
    by_region: dict[int, list[str]] = {}
    for f in alignment.fragments:
        by_region.setdefault(f.region, []).append(f.text)
    labelled = [(tuple(int(x) for x in alignment.boxes[i]), " / ".join(t)) for i, t in by_region.items()]
    return draw_boxes(image, labelled)  # type: ignore[arg-type]


def save_image(im: Image.Image, path: str | Path) -> Path:
    """Save atomically, format from the suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        im.save(tmp)
        os.replace(tmp, path)
    except (OSError, ValueError, KeyError) as e:
        Path(tmp).unlink(missing_ok=True)
        raise UsageError(f"{path}: cannot write image ({e})") from None
    return path


# --------------------------------------------------------------------------- region captions (paper Sec. 3.2)
# The generator learns from snippets the way it learns from photos: a snippet's "photo" is its region's
# feature, its "sentence" the fragment. Fragments shorter than MIN_SNIPPET_WORDS ("a", "in") are noise.

MIN_SNIPPET_WORDS = 2


def snippet_groups(rows: list[dict[str, Any]], min_words: int = MIN_SNIPPET_WORDS,
                   skip_full_image: bool = False) -> dict[tuple[str, int], list[str]]:
    """(image_id, region) -> its fragments (each at least `min_words` words), in file order."""
    groups: dict[tuple[str, int], list[str]] = {}
    for r in rows:
        if len(r["fragment"].split()) < min_words or (skip_full_image and r["region"] == 0):
            continue
        groups.setdefault((r["image_id"], int(r["region"])), []).append(r["fragment"])
    return groups


def add_snippets(train: tuple[torch.Tensor, ...], store: Any, snippets_path: str | Path, vocab: Any, max_len: int,
                 root: Path | None = None, min_words: int = MIN_SNIPPET_WORDS) -> tuple[torch.Tensor, ...]:
    """Training data for the region generator: the full-image pairs `train` (feats (P, D), photo (S,),
    inputs, targets, as train.caption_split returns them) plus one pair per snippet of a training
    photo (its region's feature, its fragment). Snippets of any other split are refused: they would
    leak evaluation text into training."""
    from .datasets import load_flickr8k
    from .train import caption_sentences

    feats, photo, inputs, targets = train
    groups = snippet_groups(read_snippets(snippets_path), min_words)
    split = {r.image_id: r.split for r in load_flickr8k(root).records}
    if bad := sorted({i for i, _ in groups if split.get(i) != "train"}):
        raise UsageError(f"{snippets_path}: snippets of {len(bad)} photos outside the training split "
                         f"(e.g. {bad[0]}); export them with --split train")
    if missing := sorted({i for i, _ in groups if i not in store}):
        raise StoreError(f"{snippets_path}: {len(missing)} photos are not in the feature store (e.g. {missing[0]})")
    if not groups:
        raise UsageError(f"{snippets_path}: no snippets of {min_words}+ words")
    keys = list(groups)
    cache: dict[str, np.ndarray] = {}
    region_feats = []
    for image_id, region in keys:
        if image_id not in cache:
            cache[image_id] = store.get(image_id).features
        region_feats.append(torch.from_numpy(cache[image_id][region].astype(np.float32)))
    ids, owner = [], []
    for k, key in enumerate(keys):
        for frag in groups[key]:
            ids.append(vocab.encode(frag.split()))
            owner.append(len(feats) + k)
    s_in, s_tg = caption_sentences(ids, max_len)
    T = max(inputs.shape[1], s_in.shape[1])

    def pad(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, T - x.shape[1]))  # PAD = 0

    return (torch.cat([feats, torch.stack(region_feats)]), torch.cat([photo, torch.tensor(owner)]),
            torch.cat([pad(inputs), pad(s_in)]), torch.cat([pad(targets), pad(s_tg)]))


@dataclass(frozen=True)
class RegionCaption:
    region: int
    box: tuple[int, int, int, int]
    caption: str
    logprob: float  # of the whole caption (END included)
    words: int

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["box"] = list(self.box)
        d["logprob"] = round(self.logprob, 4)
        return d


def region_captions(loaded: Any, regions: RegionFeatures, beam: int = 7, max_len: int | None = None,
                    top: int | None = None) -> list[RegionCaption]:
    """A caption for every region of a photo (row 0 = the full image) with the region generator.
    top: keep the `top` regions whose captions the model is surest of (mean log-probability per word)."""
    from .evaluate import generate_captions

    if beam < 1:
        raise UsageError(f"beam must be >= 1, got {beam}")
    caps = generate_captions(loaded, torch.from_numpy(np.asarray(regions.features, np.float32)), beam=beam,
                             max_len=max_len)
    out = []
    for i, c in enumerate(caps):
        words = loaded.vocab.decode(c.tokens)
        out.append(RegionCaption(i, tuple(int(x) for x in regions.boxes[i]), " ".join(words),  # type: ignore[arg-type]
                                 float(c.logprob), len(words)))
    if top is not None and top > 0:
        keep = sorted(out, key=lambda r: r.logprob / (r.words + 1), reverse=True)[:top]
        out = sorted(keep, key=lambda r: r.region)
    return out


def draw_region_captions(image: Image.Image, caps: list[RegionCaption]) -> Image.Image:
    return draw_boxes(image, [(c.box, c.caption) for c in caps])


def crop_features(encoder: RegionEncoder, image: Image.Image, boxes: np.ndarray) -> np.ndarray:
    """Each box cut out and encoded as a photo of its own (the full-image feature of the crop):
    how a full-frame model sees a region in the paper's comparison. (len(boxes), D)."""
    crops = [image.crop(tuple(int(v) for v in b)) for b in boxes]
    whole = [np.array([[0, 0, c.width, c.height]], np.int32) for c in crops]
    out = []
    for i in range(0, len(crops), 16):
        out += [f[0] for f in encoder.encode(crops[i:i + 16], whole[i:i + 16])]
    return np.stack(out).astype(np.float32)


def evaluate_regions(region_model: str | Path, full_model: str | Path, features: str | Path,
                     snippets_path: str | Path | None = None, align_model: str | Path | None = None,
                     beta: float = DEFAULT_BETA, beam: int = 7, split: str = "test", root: Path | None = None,
                     min_words: int = MIN_SNIPPET_WORDS, device: str | None = None, meteor: bool = False,
                     on_progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """The paper's region-level comparison without region annotations: held-out snippets (the `split`
    photos' sentences aligned to their regions; from `snippets_path`, or aligned here with `align_model`)
    are the references of their region; each of the two generators describes every such region (not
    the full image) from its RoI feature and from the region cut out as a photo. BLEU/CIDEr x100."""
    from . import paths
    from .captioner import load_caption
    from .datasets import load_flickr8k
    from .embedding import load_align
    from .evaluate import caption_metrics, generate_captions, paper_results
    from .features import FeatureStore
    from .images import load as load_image
    from .train import pick_device

    dev = pick_device(device)
    models = {"region": load_caption(region_model, device=dev), "full": load_caption(full_model, device=dev)}
    ds = load_flickr8k(root)
    recs = {r.image_id: r for r in ds.split(split)}
    with FeatureStore(features, readonly=True) as store:
        for m in models.values():
            if m.region_config.extractor_id() != store.extractor_id:
                raise StoreError(f"{features}: made by extractor {store.extractor_id}, but {m.path} was trained "
                                 f"on {m.region_config.extractor_id()} features")
        if snippets_path is not None:
            rows = read_snippets(snippets_path)
            source = str(snippets_path)
        else:
            aligner = load_align(paths.find_model(str(align_model or "align")))
            rows = list(snippets(aligner, store, [r for r in recs.values() if r.image_id in store], beta))
            source = f"aligned here: {aligner.path}, beta {beta:g}"
        if bad := sorted({r["image_id"] for r in rows} - set(recs)):
            raise UsageError(f"snippets of {len(bad)} photos outside the {split} split (e.g. {bad[0]})")
        groups = snippet_groups(rows, min_words, skip_full_image=True)
        if not groups:
            raise UsageError(f"no {split} snippets of {min_words}+ words on a region other than the full image")
        keys = sorted(groups)
        roi = np.stack([store.get(i).features[r] for i, r in keys]).astype(np.float32)
        boxes = [store.get(i).boxes[r] for i, r in keys]
    encoder = RegionEncoder(models["full"].region_config, dev)
    crops = np.zeros_like(roi)
    by_image: dict[str, list[int]] = {}
    for k, (i, _) in enumerate(keys):
        by_image.setdefault(i, []).append(k)
    for image_id, ks in by_image.items():
        crops[ks] = crop_features(encoder, load_image(recs[image_id].path), np.stack([boxes[k] for k in ks]))
        if on_progress:
            on_progress(len(ks))

    refs = {f"{i}#{r}": groups[(i, r)] for i, r in keys}
    inputs = {"RoI feature": torch.from_numpy(roi), "crop as a photo": torch.from_numpy(crops)}
    rows_out: dict[str, Any] = {}
    examples: dict[str, dict[str, str]] = {k: {} for k in refs}
    for mname, label in (("full", "full-frame model"), ("region", "region model")):
        for iname, x in inputs.items():
            caps = generate_captions(models[mname], x, beam=beam, on_progress=on_progress)
            text = {k: " ".join(models[mname].vocab.decode(c.tokens)) for k, c in zip(refs, caps)}
            name = f"{label}, {iname}"
            rows_out[name] = caption_metrics(refs, text, meteor=meteor)
            rows_out[name]["distinct captions"] = len(set(text.values()))
            for k in refs:
                examples[k][name] = text[k]
    paper = paper_results().get("region_generation", {})
    return {"split": split, "photos": len(by_image), "regions": len(keys),
            "paper": {"CIDEr": paper.get("CIDEr"), "note": "COCO, human region annotations (not snippets), "
                                                           "full-frame model on crops"},
            "references": sum(len(v) for v in refs.values()), "snippets": source, "beam": beam,
            "min_words": min_words, "region_model": str(models["region"].path),
            "full_model": str(models["full"].path), "features": str(features), "rows": rows_out,
            "examples": [{"region": k, "box": [int(v) for v in boxes[n]], "references": refs[k], **examples[k]}
                         for n, k in enumerate(refs)]}
