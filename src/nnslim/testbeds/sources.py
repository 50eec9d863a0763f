"""Where a testbed's data comes from: the offline default (Python's docstrings, sklearn's digits) or the
user's own files.

Audio: testbeds/audio.py. Text: a .txt file (one text per non-empty line), a JSONL / JSON / CSV / TSV / Parquet column, or a
`datasets` dataset saved with `save_to_disk` (its Arrow files are read with pyarrow; nothing is
imported from the folder). Images: a folder (one sub-folder per class, or flat) or an .npz holding an
image array and optional labels. Labels come from a label column / sub-folder names / an npz array.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import NnslimError

TEXT_COLUMNS = ("text", "sentence", "content", "document", "question", "prompt", "input")
# text pairs (NLI, paraphrase, cross-encoders / rerankers, extractive QA): found before a single column
PAIR_COLUMNS = (("sentence1", "sentence2"), ("premise", "hypothesis"), ("question", "context"),
                ("question1", "question2"), ("question", "passage"), ("query", "passage"), ("query", "document"),
                ("text", "text_pair"), ("sentence_a", "sentence_b"), ("question", "sentence"))
LABEL_COLUMNS = ("label", "labels", "target", "class")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MAX_RECORDS = 1_000_000


@dataclass
class Records:
    """Rows of a data file: texts or images, labels when the file has them, and where they came from."""

    texts: list[str] = field(default_factory=list)
    pairs: list[str] | None = None  # the second text of each row (sentence pairs), else None
    images: np.ndarray | None = None  # [N, C, H, W] float32 in 0..1, or [N, H, W] grayscale; or a list of [H, W, 3]
    # uint8 images of any size (image-text pairs: testbeds/vision_language.py)
    labels: list[Any] | None = None
    origin: str = ""
    labels_from_folders: bool = False  # image sub-folder names (torchvision ImageFolder's layout)
    audio: list[np.ndarray] | None = None  # mono float32 clips at the model's rate (testbeds/audio.py)

    def __len__(self) -> int:
        if self.audio is not None:
            return len(self.audio)
        return len(self.texts) if self.images is None else len(self.images)


def _field(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def _pick(columns: Sequence[str], wanted: str | None, defaults: tuple[str, ...], field_name: str, path: Path,
          required: bool = True) -> str | None:
    if wanted is not None:
        if wanted not in columns:
            raise NnslimError(f"{_field(field_name)}={wanted!r} is not a column of {str(path)!r}; its columns: "
                              f"{', '.join(map(str, columns)) or '(none)'}")
        return wanted
    for name in defaults:
        if name in columns:
            return name
    if required:
        raise NnslimError(f"{str(path)!r} has no column named {' / '.join(defaults)}; pass "
                          f"{_field(field_name)}=NAME (its columns: {', '.join(map(str, columns)) or '(none)'})")
    return None


def _text_columns(columns: Sequence[str], text_column: str | None, path: Path) -> list[str]:
    """The column holding the text, or two (a sentence pair): `text_column` as "NAME" or "FIRST,SECOND",
    else a known pair of columns, else the first known single column."""
    if text_column is not None:
        names = [c.strip() for c in text_column.split(",")] if "," in text_column and text_column not in columns \
            else [text_column]
        if len(names) > 2 or not all(names):
            raise NnslimError(f"--text-column={text_column!r} is not allowed; allowed: a column name, or two "
                              "separated by a comma (a sentence pair)")
        return [_pick(columns, n, TEXT_COLUMNS, "text_column", path) for n in names]
    for pair in PAIR_COLUMNS:
        if all(c in columns for c in pair):
            return list(pair)
    return [_pick(columns, None, TEXT_COLUMNS, "text_column", path)]


def _from_rows(rows: list[dict], path: Path, text_column: str | None, label_column: str | None) -> Records:
    if not rows:
        raise NnslimError(f"{str(path)!r} holds no records")
    columns = list(rows[0])
    tcols = _text_columns(columns, text_column, path)
    lcol = _pick(columns, label_column, LABEL_COLUMNS, "label_column", path, required=label_column is not None)
    texts, seconds, labels = [], [], []
    for i, row in enumerate(rows):
        values = [row.get(c) for c in tcols]
        for c, value in zip(tcols, values):
            if not isinstance(value, str):
                raise NnslimError(f"{str(path)!r} record {i}: column {c!r} is {type(value).__name__}, not text")
        if not values[0].strip():  # an empty text is skipped with its pair and label (rows stay aligned)
            continue
        texts.append(values[0])
        if len(values) == 2:
            seconds.append(values[1])
        if lcol is not None:
            labels.append(row.get(lcol))
    return Records(texts=texts, pairs=seconds if len(tcols) == 2 else None,
                   labels=labels if lcol is not None else None, origin=f"{path.name}:{'+'.join(tcols)}")


def _read_arrow_dir(path: Path) -> list[dict]:
    """A `datasets.Dataset.save_to_disk` folder: its data-*.arrow files (Arrow IPC streams)."""
    try:
        import pyarrow as pa
    except ImportError:
        raise NnslimError(f"reading the dataset folder {str(path)!r} needs pyarrow (pip install pyarrow)") from None
    files = sorted(path.glob("*.arrow"))
    if not files:
        splits = [p.name for p in path.iterdir() if p.is_dir() and any(p.glob("*.arrow"))]
        hint = f"; pick a split folder: {', '.join(sorted(splits))}" if splits else ""
        raise NnslimError(f"{str(path)!r} holds no .arrow files of a saved dataset{hint}")
    rows: list[dict] = []
    for f in files:
        try:
            with pa.memory_map(str(f)) as source:
                try:
                    table = pa.ipc.open_stream(source).read_all()
                except pa.ArrowInvalid:
                    table = pa.ipc.open_file(source).read_all()
        except Exception as e:  # pyarrow's own error types on a damaged file
            raise NnslimError(f"{str(f)!r} is not a readable Arrow file: {str(e)[:200]}") from None
        rows += table.to_pylist()
    return rows


def _read_table(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".ndjson"):
            rows = []
            with path.open(encoding="utf-8") as f:
                for i, line in enumerate(f):
                    if line.strip():
                        try:
                            rows.append(json.loads(line))
                        except ValueError as e:
                            raise NnslimError(f"{str(path)!r} line {i + 1} is not JSON: {e}") from None
            return rows
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict):  # {"text": [...], "label": [...]} column form
                lengths = {len(v) for v in data.values() if isinstance(v, list)}
                if len(lengths) != 1:
                    raise NnslimError(f"{str(path)!r} must hold a list of records or equal-length columns")
                n = lengths.pop()
                return [{k: v[i] for k, v in data.items() if isinstance(v, list)} for i in range(n)]
            return list(data)
        if suffix in (".csv", ".tsv"):
            with path.open(encoding="utf-8", newline="") as f:
                return list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
        if suffix == ".parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise NnslimError(f"reading {str(path)!r} needs pyarrow (pip install pyarrow)") from None
            return pq.read_table(str(path)).to_pylist()
    except NnslimError:
        raise
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise NnslimError(f"{str(path)!r} cannot be read: {str(e)[:200]}") from None
    except Exception as e:  # pyarrow's errors on a damaged parquet file
        raise NnslimError(f"{str(path)!r} cannot be read: {str(e)[:200]}") from None
    raise NnslimError(f"{str(path)!r}: suffix {suffix!r} is not allowed")


TEXT_FORMATS = ".txt, .jsonl, .json, .csv, .tsv, .parquet, a saved `datasets` folder"
IMAGE_FORMATS = "a folder of images (sub-folders = classes), .npz"


def read_texts(spec: str | Path, what: str, text_column: str | None = None,
               label_column: str | None = None) -> Records:
    """Texts (and labels where present) of a user's data file; `what` names the option in errors."""
    path = Path(spec)
    if not path.exists():
        raise NnslimError(f"--{what}={str(spec)!r}: file not found; allowed: {TEXT_FORMATS}")
    if path.is_dir():
        rows = _read_arrow_dir(path)
        records = _from_rows(rows, path, text_column, label_column)
    elif path.suffix.lower() == ".txt":
        try:
            lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
        except (OSError, UnicodeDecodeError) as e:
            raise NnslimError(f"--{what}={str(spec)!r} cannot be read as UTF-8 text: {e}") from None
        records = Records(texts=[ln for ln in lines if ln], origin=path.name)
    elif path.suffix.lower() in (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet"):
        records = _from_rows(_read_table(path), path, text_column, label_column)
    else:
        raise NnslimError(f"--{what}={str(spec)!r}: suffix {path.suffix!r} is not allowed; allowed: {TEXT_FORMATS}")
    if not records.texts:
        raise NnslimError(f"--{what}={str(spec)!r} holds no text")
    if len(records.texts) > MAX_RECORDS:
        raise NnslimError(f"--{what}={str(spec)!r} holds {len(records.texts)} texts; allowed: at most {MAX_RECORDS}")
    return records


def read_npz(path: Path, what: str) -> dict[str, np.ndarray]:
    """The arrays of an .npz file (no pickled objects), or a clear error naming the option."""
    try:
        with np.load(str(path), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise NnslimError(f"--{what}={str(path)!r} is not a readable .npz: {str(e)[:200]}") from None


def read_images(spec: str | Path, what: str, size: tuple[int, int] | None = None) -> Records:
    """Images (float 0..1, [N, C, H, W] RGB) and labels of a folder or an .npz file."""
    path = Path(spec)
    if not path.exists():
        raise NnslimError(f"--{what}={str(spec)!r}: file not found; allowed: {IMAGE_FORMATS}")
    if path.is_file() and path.suffix.lower() == ".npz":
        arrays = read_npz(path, what)
        key = next((k for k in ("images", "pixel_values", "x", "X") if k in arrays), None)
        if key is None:
            raise NnslimError(f"--{what}={str(spec)!r} holds {', '.join(arrays) or 'no arrays'}; allowed: an array "
                              "named images / pixel_values / x (and labels / y)")
        images = arrays[key].astype(np.float32)
        if arrays[key].dtype == np.uint8:
            images /= 255.0
        label_key = next((k for k in ("labels", "label", "y") if k in arrays), None)
        labels = arrays[label_key].tolist() if label_key else None
        return Records(images=images, labels=labels, origin=path.name)
    if not path.is_dir():
        raise NnslimError(f"--{what}={str(spec)!r}: suffix {path.suffix!r} is not allowed; allowed: {IMAGE_FORMATS}")
    from PIL import Image

    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise NnslimError(f"--{what}={str(spec)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    classes = sorted({p.parent.name for p in files if p.parent != path})
    images, labels = [], []
    for p in files:
        try:
            with Image.open(p) as im:
                im = im.convert("RGB")
                if size is not None:
                    im = im.resize((size[1], size[0]), Image.BILINEAR)
                images.append(np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255.0)
        except Exception as e:  # PIL raises many types on a damaged file
            raise NnslimError(f"--{what}: {str(p)!r} is not a readable image: {str(e)[:200]}") from None
        labels.append(p.parent.name if p.parent != path else None)
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise NnslimError(f"--{what}={str(spec)!r}: images differ in size ({sorted(shapes)[:3]}); nnslim resizes "
                          "them only when the model's config gives an image size")
    return Records(images=np.stack(images), labels=labels if classes else None, origin=path.name,
                   labels_from_folders=bool(classes))


class TextSource:
    """The offline default: Python's standard-library docstrings, split by a hash (never overlapping)."""

    description = "Python stdlib docstrings (offline default)"
    labels: list | None = None

    def sentences(self, split: str) -> list[str]:
        from . import text

        return list(text.sentences(split))

    def passage(self, split: str) -> str:
        from . import text

        return text.passage(split)

    def split_labels(self, split: str) -> list | None:
        return None

    def second_texts(self, split: str) -> list[str] | None:
        """The second text of each pair of `sentences(split)`, or None when the data is single texts."""
        return None

    @property
    def has_pairs(self) -> bool:
        return False


class UserText(TextSource):
    """The user's texts for calibration and/or evaluation; a split not given falls back to the default."""

    def __init__(self, calibration: Records | None = None, evaluation: Records | None = None):
        self.splits = {"calibration": calibration, "eval": evaluation}
        if calibration is not None and evaluation is not None and (calibration.pairs is None) != (
                evaluation.pairs is None):
            single, paired = ("calibration", "evaluation") if calibration.pairs is None else ("evaluation",
                                                                                               "calibration")
            raise NnslimError(f"the {paired} data holds sentence pairs and the {single} data single texts; give "
                              "both in the same form (--text-column FIRST,SECOND)")
        given = [f"{k} from {r.origin}" for k, r in self.splits.items() if r is not None]
        missing = [k for k, r in self.splits.items() if r is None]
        self.description = "; ".join(given + [f"{k}: {TextSource.description}" for k in missing])

    def sentences(self, split: str) -> list[str]:
        records = self.splits.get(split)
        return list(records.texts) if records is not None else super().sentences(split)

    def passage(self, split: str) -> str:
        records = self.splits.get(split)
        return "\n\n".join(records.texts) if records is not None else super().passage(split)

    def split_labels(self, split: str) -> list | None:
        records = self.splits.get(split)
        return records.labels if records is not None else None

    def second_texts(self, split: str) -> list[str] | None:
        records = self.splits.get(split)
        if records is None and self.has_pairs:  # a split not given: each default text paired with the next
            texts = self.sentences(split)
            return texts[1:] + texts[:1]
        return list(records.pairs) if records is not None and records.pairs is not None else None

    @property
    def has_pairs(self) -> bool:
        return any(r is not None and r.pairs is not None for r in self.splits.values())
