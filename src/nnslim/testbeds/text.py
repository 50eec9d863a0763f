"""A deterministic English corpus from the docstrings shipped with Python's standard library.

Files are parsed with `ast`, never imported (importing some stdlib modules starts programs).
Whole docstrings are split between calibration and evaluation by a hash of their text, so the two
splits never share a docstring; sentences that occur in both are dropped from evaluation.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import sysconfig
from functools import lru_cache
from pathlib import Path

SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "lib2to3", "__pycache__", "turtledemo"}
EVAL_PERCENT = 30  # share of docstrings held out for evaluation
_SENTENCE_END = re.compile(r"(?<=[a-z0-9\)][.!?])\s+(?=[A-Z])")
_WORD = re.compile(r"[A-Za-z]+")


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _docstrings_of(source: str) -> list[str]:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    nodes = [tree] + [n for n in ast.walk(tree)
                      if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    out = []
    for node in nodes:
        doc = ast.get_docstring(node, clean=True)
        if doc:
            out.append(doc)
    return out


def _clean_paragraphs(doc: str) -> list[str]:
    """Prose paragraphs of a docstring: no doctest, no code-like or table-like blocks."""
    paras = []
    for block in re.split(r"\n\s*\n", doc):
        lines = [ln.strip() for ln in block.splitlines()]
        if not lines or any(ln.startswith((">>>", "...", "$", "%", "|", "+-", "==", "--")) for ln in lines):
            continue
        text = " ".join(lines)
        if not text.isascii():
            continue
        letters = sum(c.isalpha() or c == " " for c in text)
        if letters < 0.85 * len(text):  # mostly symbols / code
            continue
        paras.append(text)
    return paras


def _split_of(text: str) -> str:
    h = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") % 100
    return "eval" if h < EVAL_PERCENT else "calibration"


def _cache_file(base: Path, files: list[Path]) -> Path:
    """Where the harvest of these files is cached: keyed by this module's code and every file's path, size
    and mtime (parsing the stdlib takes ~12 s; every process that needs the default text paid it)."""
    from ..io import cache_dir

    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update(str(base).encode())
    for p in files:
        st = p.stat()
        h.update(f"\0{p.relative_to(base)}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return cache_dir() / f"docstrings-{h.hexdigest()[:24]}.json"


@lru_cache(maxsize=2)
def docstrings(root: str | None = None) -> tuple[str, ...]:
    """All prose docstring paragraphs-joined texts of the stdlib, sorted by path then position (cached on
    disk, see _cache_file; a missing, unreadable or damaged cache is rebuilt)."""
    base = Path(root) if root else stdlib_dir()
    files = [p for p in sorted(base.rglob("*.py")) if not SKIP_DIRS.intersection(p.relative_to(base).parts)]
    try:
        cache = _cache_file(base, files)
    except OSError:  # an unusable cache dir (read-only home): no cache, same result
        return _harvest(files)
    try:
        cached = json.loads(cache.read_text(encoding="utf-8"))
        if isinstance(cached, list) and all(isinstance(t, str) for t in cached):
            return tuple(cached)
    except (OSError, ValueError):
        pass
    out = _harvest(files)
    try:  # written whole under a temporary name, then renamed: readers never see half a file
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(out), encoding="utf-8")
        os.replace(tmp, cache)
    except OSError:
        pass
    return out


def _harvest(files: list[Path]) -> tuple[str, ...]:
    seen, out = set(), []
    for path in files:
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        for doc in _docstrings_of(source):
            text = "\n\n".join(_clean_paragraphs(doc))
            if len(text) >= 40 and text not in seen:
                seen.add(text)
                out.append(text)
    return tuple(out)


def split_docstrings(split: str, root: str | None = None) -> list[str]:
    if split not in ("calibration", "eval"):
        raise ValueError(f"split={split!r} is not allowed; allowed: calibration, eval")
    return [d for d in docstrings(root) if _split_of(d) == split]


def _sentences_from(docs: list[str], min_words: int, max_words: int) -> list[str]:
    out, seen = [], set()
    for doc in docs:
        for para in doc.split("\n\n"):
            for sent in _SENTENCE_END.split(para):
                sent = sent.strip()
                n_words = len(_WORD.findall(sent))
                if not (min_words <= n_words <= max_words) or not sent[0].isupper():
                    continue
                if not sent.endswith((".", "?", "!")) or sent in seen:
                    continue
                seen.add(sent)
                out.append(sent)
    return out


@lru_cache(maxsize=8)
def sentences(split: str, min_words: int = 6, max_words: int = 40, root: str | None = None) -> tuple[str, ...]:
    """English sentences of one split; evaluation never contains a calibration sentence."""
    own = _sentences_from(split_docstrings(split, root), min_words, max_words)
    if split == "eval":
        calib = set(_sentences_from(split_docstrings("calibration", root), min_words, max_words))
        own = [s for s in own if s not in calib]
    return tuple(own)


def passage(split: str, root: str | None = None) -> str:
    """One long text of a split (docstrings joined by blank lines), for language-model metrics."""
    return "\n\n".join(split_docstrings(split, root))
