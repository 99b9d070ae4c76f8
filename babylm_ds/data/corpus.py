"""Reading corpora: a .txt file or a directory of them (optionally .xz/.gz compressed), with the
source (gutenberg / childes / switchboard / generic) detected from the file or folder name."""
import gzip
import lzma
import os
import re
from pathlib import Path

from .clean import clean

EMBEDDED_CORPUS = Path(__file__).resolve().parents[2] / "data" / "corpus"
SOURCES = ("gutenberg", "childes", "switchboard")
TEXT_SUFFIXES = (".txt", ".train")  # never .dev/.test: a BabyLM data root holds those too
SKIP_PREFIXES = ("license", "legal", "readme")
TRAIN_SET_PREFIX = "train_"  # BabyLM's training-set folders: train_10M, train_100M (strict-small, strict)
MAX_CONTROL_FRACTION = 0.01
_CONTROL = re.compile(r"[\x01-\x08\x0b\x0e-\x1f\x7f]")


def detect_source(path):
    """First of SOURCES named in the file name, else in its folder's name, else 'generic'."""
    parts = [p.lower() for p in Path(path).parts[-2:]][::-1]
    for part in parts:
        for source in SOURCES:
            if source in part:
                return source
    return "generic"


def _strip_compression(name):
    for ext in (".xz", ".gz"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def list_files(corpus):
    """Sorted corpus files under `corpus` (a file or a directory, searched recursively)."""
    corpus = Path(corpus)
    if not corpus.exists():
        raise FileNotFoundError(f"corpus path {corpus} does not exist")
    if corpus.is_file():
        return [corpus]
    files = sorted(
        p for p in corpus.rglob("*")
        if p.is_file() and not p.name.startswith(".")
        and not p.name.lower().startswith(SKIP_PREFIXES)
        and _strip_compression(p.name).endswith(TEXT_SUFFIXES)
    )
    if not files:
        suffixes = "|".join("*" + s for s in TEXT_SUFFIXES)
        raise ValueError(f"corpus directory {corpus} has no text files ({suffixes}, optionally .xz/.gz)")
    sets = sorted({str(d.relative_to(corpus)) for f in files for d in f.parents
                   if d.name.startswith(TRAIN_SET_PREFIX) and corpus in d.parents})
    if len(sets) > 1:  # a BabyLM download holds train_10M/ and train_100M/: reading both would merge them
        raise ValueError(f"corpus directory {corpus} holds several training sets ({', '.join(sets)}); "
                         f"pass one of them, e.g. --corpus {corpus / sets[0]}")
    return files


def read_text(path):
    """Decoded text of one corpus file; ValueError naming the file if it is empty, binary or not UTF-8."""
    path = Path(path)
    opener = {".xz": lzma.open, ".gz": gzip.open}.get(path.suffix, open)
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (lzma.LZMAError, OSError, EOFError) as e:
        raise ValueError(f"corpus file {path} cannot be read/decompressed: {e}") from None
    if not data.strip():
        raise ValueError(f"corpus file {path} is empty")
    if b"\x00" in data:
        raise ValueError(f"corpus file {path} looks binary (contains NUL bytes), expected UTF-8 text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"corpus file {path} is not valid UTF-8 "
                         f"(byte 0x{data[e.start]:02x} at offset {e.start})") from None
    control = len(_CONTROL.findall(text))
    if control > MAX_CONTROL_FRACTION * len(text):
        raise ValueError(f"corpus file {path} looks binary ({control} control characters in {len(text)})")
    return text.lstrip("\ufeff")


def count_words(text):
    """Whitespace-separated words (the BabyLM budget unit)."""
    return len(text.split())


def _truncate_doc(doc, n):
    lines = []
    for line in doc.split("\n"):
        words = line.split()
        lines.append(" ".join(words[:n]))
        n -= len(words)
        if n <= 0:
            break
    return "\n".join(line for line in lines if line)


def read_corpus(corpus=None, max_words=None):
    """[(source, file_name, [documents])] for every file of `corpus` (None: the embedded corpus).

    `max_words` keeps about that many words, split over sources in proportion to their raw word
    counts; each source keeps its first documents in file order (the last one cut at a word
    boundary), and files past a source's quota are not cleaned at all."""
    if corpus is None and not EMBEDDED_CORPUS.is_dir():
        raise FileNotFoundError(f"embedded corpus {EMBEDDED_CORPUS} not found: use a source checkout "
                                "(pip install -e .) or pass --corpus")
    corpus = EMBEDDED_CORPUS if corpus is None else Path(os.path.expanduser(os.fspath(corpus)))
    raw = [(detect_source(p), p, read_text(p)) for p in list_files(corpus)]
    quota = None
    if max_words:
        words = {}
        for source, _, text in raw:
            words[source] = words.get(source, 0) + count_words(text)
        quota = {s: max_words * w // sum(words.values()) for s, w in words.items()}
    out = []
    for source, path, text in raw:
        if quota is not None and quota[source] <= 0:
            continue
        docs = clean(text, source)
        if not docs:
            raise ValueError(f"corpus file {path} has no text left after cleaning ({source} rules)")
        if quota is not None:
            kept = []
            for doc in docs:
                if quota[source] <= 0:
                    break
                kept.append(_truncate_doc(doc, quota[source]))
                quota[source] -= count_words(kept[-1])
            docs = kept
        out.append((source, str(path.relative_to(corpus) if corpus.is_dir() else path.name), docs))
    return out
