"""What `vsa serve` keeps loaded: the photo index (and its sentence twin), their models, the caption
models and the CNN, and the operations the JSON API answers with. Every operation calls the library
function the matching CLI command calls, and builds the same dict its `--json` prints, so the two
cannot drift apart. HTTP lives in app.py; nothing here knows about requests.

A rebuilt index is a new generation behind the same link (index.py). Each operation first reads the
link (one readlink); when it moved, the new generation is opened and swapped in, and the old one is
closed once the requests still using it have finished."""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from .. import captioning, index
from ..align import aligner, mrf
from ..bridge.align import word_status
from ..captioning.load import load_captioning
from ..core import errors, names, paths  # noqa: F401 (names: for app.py, through this one door)

# The server's one door into the library (kept to this line so that moving modules means one edit).
from ..core.config import DEFAULT_BEAM
from ..index import dupes, floor
from ..index import query as search
from ..index.files import OK, IndexedFiles
from ..models import captioner, encode
from ..vision import images, regions
from ..vision.concepts import Concepts
from .snapshot import Snapshot

MetaFilter = index.MetaFilter  # for app.py, through this one door
DUPES_THRESHOLD = dupes.DEFAULT_THRESHOLD
THUMB_CACHE = 512  # thumbnails kept in memory (~30 KB each)
THUMB_CACHE_MAX_SIZE = 640  # larger ones (the photo page's) are made afresh: they would crowd the cache


class Engine:
    """Models and index, loaded once; thread-safe (the CNN runs one photo at a time)."""

    def __init__(self, name: str = index.DEFAULT_NAME, caption_model: str = paths.CAPTION_MODEL,
                 region_model: str = paths.REGION_CAPTION_MODEL, max_megapixels: float = images.DEFAULT_MAX_MEGAPIXELS):
        self.name = name
        self.max_megapixels = max_megapixels
        self.links = {kind: index.Location(index.resolve(name, kind)) for kind in index.KINDS}
        self._region_model_name = region_model
        self._region_captioner: Any = None
        self._models: dict[str, Any] = {}  # fingerprint -> LoadedAlign
        self._calibrations: dict[str, Any] = {}  # fingerprint -> index.floor.Calibration or None
        self._encoders: dict[Any, Any] = {}  # region config -> RegionEncoder
        self._thumbs: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
        self._lock = threading.Lock()  # guards the current snapshot and the caches
        self._cnn = threading.Lock()  # one photo through the CNN at a time: 2 cores, big activations
        self._snap: Snapshot | None = None
        with self.snapshot():  # a missing index fails now, not at the first request
            pass
        # The models `vsa caption` uses on the CPU (numpy ones, with the shipped alignment model picking
        # among the finished beams when it fits), so that a caption here is the CLI's to the last digit.
        self.captioner, self.reranker, self._caption_cnn = load_captioning(paths.find_model(caption_model),
                                                                           device="cpu")
        self.encoder(self.captioner.region_config)  # the CNN, loaded now rather than by the first photo

    # ------------------------------------------------------------------ generations

    def _key(self) -> tuple[str | None, str | None]:
        cur = [self.links[k].current() for k in ("photos", "sentences")]
        return (str(cur[0]) if cur[0] else None, str(cur[1]) if cur[1] else None)

    def _model_for(self, ix: Any) -> Any:
        fp = ix.manifest["model"]["fingerprint"]
        if fp not in self._models:
            self._models[fp] = search.model_for(ix)
        return self._models[fp]

    def _open(self, key: tuple[str | None, str | None]) -> Snapshot:
        photos = index.open_index(self.name, "photos")
        sentences = None
        try:
            snap = Snapshot(key, photos, self._model_for(photos))
            if key[1] is not None:
                sentences = index.open_index(self.name, "sentences")
                snap.sentences, snap.sentence_model = sentences, self._model_for(sentences)
        except BaseException:
            photos.close()
            if sentences is not None:
                sentences.close()
            raise
        # The generation opened may be newer than the key read (a swap in between): key by what is open.
        snap.key = (str(photos.dir), str(sentences.dir) if sentences is not None else None)
        snap.files = IndexedFiles(photos.manifest.get("roots", []))
        return snap

    @contextmanager
    def snapshot(self) -> Iterator[Snapshot]:
        """The current generation, reopened first when a build has swapped a new one in."""
        with self._lock:
            key = self._key()
            if self._snap is None or self._snap.key != key:
                new = self._open(key)
                old, self._snap = self._snap, new
                if old is not None:
                    old.release(retire=True)
            snap = self._snap
            with snap.lock:
                snap.users += 1
        try:
            yield snap
        finally:
            snap.release()

    def encoder(self, cfg: Any, top: Any = None) -> Any:
        """The CNN of region config `cfg`; `top`: the fine-tuned CNN top it names (an alignment model's)."""
        with self._lock:
            if cfg not in self._encoders:  # cfg.top names the top's weights: one encoder per top
                self._encoders[cfg] = regions.RegionEncoder(cfg, "cpu", top=top)
            return self._encoders[cfg]

    # ------------------------------------------------------------------ queries (the CLI's --json)

    def search_text(self, text: str, k: int = 10, per_word: int | None = None,
                    where: index.MetaFilter | None = None, minus: list[str] | None = None,
                    min_score: float | None = None) -> tuple[dict[str, Any], str]:
        """`vsa search TEXT [--minus M] [--min-score P] --json` (with its metadata filters), each hit (and
        each one below the floor) with its photo's index `id` and `size` added."""
        encode.query_tokens_or_fail(text)
        where = where or index.MetaFilter()
        with self.snapshot() as snap:

            def run(n: int) -> Any:
                if minus:
                    return index.search_minus(snap.photos, snap.model, text, minus, n, index.search_words)
                return index.search_words(snap.photos, snap.model, text, n, per_word)

            found, report = index.search_filtered(snap.photos, where, k, run)
            result = floor.apply_floor(found, self._calibration(snap.model), min_score).to_dict()
            if where.active:
                result["filter"] = {**report.to_dict(), "notes": report.notes()}
            for hit in [*result["hits"], *result["below_floor"]]:
                hit["id"] = snap.photo_id(hit["path"])
                hit["size"] = snap.size(hit["id"])
                if where.active:
                    hit.update(report.exif_of(hit["path"]))
            return result, snap.generation

    def dupes(self, threshold: float, where: index.MetaFilter | None = None) -> tuple[dict[str, Any], str]:
        """`vsa dupes --json`, each photo with its index `id` added."""
        with self.snapshot() as snap:
            found = index.find_dupes(snap.photos, threshold, where)
            result = {**found.to_dict(), "notes": found.notes}
            if found.filter is not None:
                result["filter"] = found.filter.to_dict()
            for g in result["groups"]:
                for p in g["photos"]:
                    p["id"] = snap.photo_id(p["path"])
            return result, snap.generation

    def _calibration(self, model: Any) -> Any:
        with self._lock:
            if model.fingerprint not in self._calibrations:
                self._calibrations[model.fingerprint] = floor.load_calibration(model)
            return self._calibrations[model.fingerprint]

    def like(self, photo: int | Path, text: str | None = None, k: int = 10,
             shown_as: str | None = None) -> tuple[dict[str, Any], str]:
        """`vsa search --like PHOTO [TEXT] --json`: photo `i` of the index (an int) or an uploaded file;
        each hit, and the query photo when it is indexed, with its `id` and `size`."""
        if text is not None:
            encode.query_tokens_or_fail(text)
        with self.snapshot() as snap:
            if isinstance(photo, int):
                self._record(photo, snap)  # the same 404 as every photo id
            else:
                self._check_photo(photo)
            with self._cnn:
                res = index.search_photo(snap.photos, snap.model, photo, k, text,
                                         encoder=self.encoder(snap.model.region_config, snap.model.top))
            result = res.to_dict()
            for hit in result["hits"]:
                hit["size"] = snap.size(hit["id"])
            like = result["like"]
            if like["id"] is not None:
                like["size"] = snap.size(like["id"])
            else:
                like["photo"] = shown_as or like["photo"]
                like["size"] = [int(like["boxes"][0][2]), int(like["boxes"][0][3])] if like["boxes"] else [0, 0]
            return result, snap.generation

    def search_image(self, photo: Path, k: int = 10, shown_as: str | None = None) -> dict[str, Any]:
        """`vsa search --image PHOTO --json`: the nearest sentences of the sentence index."""
        with self.snapshot() as snap:
            if snap.sentences is None:
                raise errors.SearchIndexError(f"no sentence index {self.name!r} (create it with "
                                         f"`vsa index text FILE --index {self.name}`)")
            self._check_photo(photo)
            if snap.sentence_generator is None:  # loaded by the first photo, so that a missing one fails this alone
                snap.sentence_generator = search.generator_for(snap.sentences)
            m, gen = snap.sentence_model, snap.sentence_generator
            with self._cnn:
                result = index.search_photo(snap.sentences, m, photo, k, encoder=self.encoder(m.region_config, m.top),
                                            generator=gen, generator_encoder=gen and self.encoder(gen.region_config))
        d = result.to_dict()
        d["query"] = shown_as or d["query"]
        return d

    def caption(self, photo: Path, beam: int = DEFAULT_BEAM, shown_as: str | None = None) -> list[dict[str, Any]]:
        """`vsa caption PHOTO --beam B --json` (a one-photo list, as the CLI prints)."""
        self._check_photo(photo)
        with self._cnn:  # as the CLI's --json: the caption and the photo's top concepts
            res = captioning.caption_photos([photo], self.captioner, beam=beam, list_concepts=5,
                                            encoder=self._caption_cnn, rerank_with=self.reranker)
        if res[0].error is not None:
            raise errors.ImageCorruptError(res[0].error.replace(str(photo), shown_as or str(photo)))
        d = res[0].to_dict()
        d["photo"] = shown_as or d["photo"]
        return [d]

    def region_captions(self, photo: Path, beam: int = DEFAULT_BEAM, top: int = 0,
                        shown_as: str | None = None) -> dict[str, Any]:
        """`vsa caption PHOTO --regions [--top N] --json`: a caption per region, with its box."""
        if beam < 1:
            raise errors.UsageError(f"--beam must be at least 1 (got {beam})")
        self._check_photo(photo)
        with self._lock:
            if self._region_captioner is None:
                self._region_captioner = captioner.load_caption(paths.find_model(self._region_model_name), "cpu")
        loaded = self._region_captioner
        with self._cnn:
            feats = self.encoder(loaded.region_config).encode_photo(photo, self.max_megapixels)
        caps = captioning.region_captions(loaded, feats, beam=beam, top=top or None)
        return {"model": str(loaded.path), "beam": beam,
                "photos": [{"photo": shown_as or str(photo), "regions": [c.to_dict() for c in caps]}]}

    def align_id(self, i: int, sentence: str, beta: float = mrf.DEFAULT_BETA) -> dict[str, Any]:
        """`vsa align PHOTO SENTENCE --index NAME --json` for photo `i` of the index: its stored
        regions (photo_path vouches that the file is the one indexed, as `vsa align` checks)."""
        aligner.sentence_tokens(sentence)
        with self.snapshot() as snap:
            rec = self._record(i, snap)
            photo = snap.files.check(rec, f"photo {i}")
            blob = snap.photos.concepts_bytes([i])[0]
            if blob is not None:
                boxes, vecs = snap.photos.boxes(i).copy(), snap.photos.vectors([i])[0].astype("float32")
                result = aligner.align_vectors(snap.model, boxes, vecs, sentence, beta, Concepts.from_bytes(blob))
                source = f"index {self.name}"
            else:
                with snap.files.open(rec, f"photo {i}") as f:
                    result = self._align_photo(snap.model, photo, sentence, beta, file=f)
                source = "photo"
            return {"photo": str(photo), "model": str(snap.model.path), "regions_from": source, **result.to_dict(),
                    **word_status(snap.model, result.tokens, True)}

    def align_upload(self, photo: Path, sentence: str, beta: float = mrf.DEFAULT_BETA,
                     shown_as: str | None = None) -> dict[str, Any]:
        """`vsa align PHOTO SENTENCE --no-index --json` for a photo that is not in the index."""
        aligner.sentence_tokens(sentence)
        with self.snapshot() as snap:
            result = self._align_photo(snap.model, photo, sentence, beta)
            return {"photo": shown_as or str(photo), "model": str(snap.model.path), "regions_from": "photo",
                    **result.to_dict(), **word_status(snap.model, result.tokens, True)}

    def _align_photo(self, model: Any, photo: Path, sentence: str, beta: float, file: BinaryIO | None = None) -> Any:
        """`file`: the checked photo already open (its regions come from the file that was checked)."""
        with self._cnn:
            regions = self.encoder(model.region_config, model.top).encode_photo(photo, self.max_megapixels, file)
            return aligner.align_photo(model, regions, sentence, beta, bridge=True)

    def status(self) -> dict[str, Any]:
        """`vsa index status --json`."""
        return index.status(self.name)

    # ------------------------------------------------------------------ the index page and photos

    def photos(self, offset: int = 0, limit: int = 100) -> dict[str, Any]:
        with self.snapshot() as snap:
            n = len(snap.photos)
            rows = []
            for i in range(max(0, offset), min(n, max(0, offset) + max(0, limit))):
                rec = snap.photos.record(i)
                # changed: not the file indexed any more (edited, replaced, gone): not served until a rebuild
                rows.append({"id": i, "path": rec["key"], "size": snap.size(i), "regions": int(snap.photos.count[i]),
                             "changed": snap.files.state(rec) != OK})
            return {"generation": snap.generation, "total": n, "offset": offset, "photos": rows}

    def photo(self, i: int) -> dict[str, Any]:
        """One photo's record: path, size and its region boxes (row 0 = the full frame)."""
        with self.snapshot() as snap:
            path = self.photo_path(i, snap)
            return {"id": i, "path": str(path), "size": snap.size(i), "boxes": snap.photos.boxes(i).tolist(),
                    "generation": snap.generation}

    def skipped(self) -> list[dict[str, str]]:
        """The files the build could not read, as `vsa index build --json` lists them."""
        with self.snapshot() as snap:
            return [{"path": p, "reason": why} for p, why in sorted(snap.photos.skipped().items())]

    def _record(self, i: int, snap: Snapshot) -> dict[str, Any]:
        if not 0 <= i < len(snap.photos):
            raise errors.SearchIndexError(f"no photo {i} in index {self.name} ({len(snap.photos)} photos)")
        return snap.photos.record(i)

    def photo_path(self, i: int, snap: Snapshot | None = None) -> Path:
        """The file of photo `i`: only ever a key of the index, and only while it is the regular file
        indexed, inside the index's folders (index/files.py)."""
        if snap is None:
            with self.snapshot() as s:
                return self.photo_path(i, s)
        return snap.files.check(self._record(i, snap), f"photo {i}")

    def open_photo(self, i: int) -> tuple[Path, BinaryIO]:
        """Photo `i`'s path and its file, open, on the same terms as photo_path: the checks hold for the
        file that is read, whatever the path points at afterwards."""
        with self.snapshot() as snap:
            rec = self._record(i, snap)
            return Path(rec["key"]), snap.files.open(rec, f"photo {i}")

    def thumbnail(self, i: int, size: int = 400) -> bytes:
        """A JPEG of photo `i` at most `size` px on its long side, upright (the guarded loader's EXIF
        handling, so that boxes in its pixels line up), kept in a small LRU cache."""
        with self.snapshot() as snap:
            rec = self._record(i, snap)
            path = snap.files.check(rec, f"photo {i}")  # before the cache too: a changed file is not shown
            key = (snap.generation, i, size)
            with self._lock:
                if key in self._thumbs:
                    self._thumbs.move_to_end(key)
                    return self._thumbs[key]
            with snap.files.open(rec, f"photo {i}") as f:
                im = images.load(path, self.max_megapixels, file=f)
        im.thumbnail((size, size))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85)
        data = buf.getvalue()
        if size > THUMB_CACHE_MAX_SIZE:
            return data
        with self._lock:
            self._thumbs[key] = data
            while len(self._thumbs) > THUMB_CACHE:
                self._thumbs.popitem(last=False)
        return data

    # ------------------------------------------------------------------ photos from the request

    def _check_photo(self, photo: Path) -> None:
        """The guarded loader's checks (missing, corrupt, too many pixels) before any model runs;
        the library then loads the photo the way the CLI does."""
        images.load(photo, self.max_megapixels)
