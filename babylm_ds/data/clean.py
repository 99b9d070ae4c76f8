"""Per-source cleaning: raw file text -> list of documents (str, lines joined by "\n").

What a document is (each is later wrapped as `<s> ... </s>`):
  gutenberg    a chapter: text between heading lines (CHAPTER I, I. Title, all-caps titles, ...);
               one paragraph per line (hard-wrapped lines joined; a file whose lines are
               mostly > 100 chars is taken as one paragraph a line).
  childes      a chunk of CHILDES_CHUNK consecutive utterances, one per line (the AO-CHILDES
               export has no transcript boundaries left).
  switchboard  a call (calls are separated by blank lines); one turn per line as "A: text"
               (speaker labels are kept, BabyLM style, and count as words).
  generic      a blank-line separated block; a file without blank lines is chunked like childes.
"""
import re

CHILDES_CHUNK = 100

_WS = re.compile(r"[ \t\u00a0]+")
_WORD = re.compile(r"\w")
_SPACE_PUNCT = re.compile(r"(?<=\w) +([,.;:!?])(?= |$)", re.M)  # scanned spacing: "certain : that"

# --- gutenberg ---
_SCAN_HYPHEN = re.compile(r"(\w)- \n(?=[a-z])")  # OCR line-break hyphen: "circum- \nstance"
_WRAP_HYPHEN = re.compile(r"(\w-)\n(?=[a-z])")   # compound wrapped at its hyphen: "paper-\nmill"
_PAGE_HEADER = re.compile(r"^(\d+|[IVXLC]+) [^a-z]+$|^[^a-z]+ \d+$")  # "18 OLIVER TWIST."
_CHAPTER = re.compile(r"(?i:^(chapter|book|volume|part|stave|letter|preface)\b[^a-z]*$|^chapter \w+\b)"
                      r"|^[IVXLC]+\. [A-Z][^.!?]*$")  # CHAPTER 1 / Chapter IX. Title / I. The Period
_END = ".!?\"')]:;*"
_ILLUSTRATION = re.compile(r"^\[(illustration|footnote)", re.I)

# --- childes (CHAT residue; AO-CHILDES exports are already clean, raw CHAT is not) ---
_CHAT_TIER = re.compile(r"^[%@].*$|^\*[A-Z0-9]{2,4}:\s*", re.M)  # %mor: / @Begin lines, *MOT: labels
_CHAT_CODES = [
    re.compile(r"\[[^\]]*\]"),                 # [=! laughs] [/] [//] [+ gram]
    re.compile(r"\x15\d+_\d+\x15"),            # media time stamps
    re.compile(r"(?m)(^| )&[-=~+]?\S*"),           # &-uh fillers, &=laughs events
    re.compile(r"(?m)(^| )(xxx|yyy|www|0)(?= |$)"),  # unintelligible / omitted words
    re.compile(r"\(\.+\)"),                    # pauses (.) (..)
    re.compile(r"\+[./!?\"<,+^]+"),            # utterance terminators/linkers +... +/. +"/.
    re.compile(r"@[a-z:]+"),                   # special-form markers word@l
    re.compile(r"[<>‡„↫↑↓⌈⌉⌊⌋]"),
]

# --- switchboard ---
_SPEAKER = re.compile(r"^([A-Z]):\s*")
_TAG = re.compile(r"<[^>]*>|\{[^}]*\}")


def _collapse(line):
    return _WS.sub(" ", line).strip()


def _chunks(lines, n):
    return ["\n".join(lines[i:i + n]) for i in range(0, len(lines), n)]


def _hard_wrapped(text, width=100):
    """True if lines are wrapped at <= `width` chars (PG style), False if a line is a paragraph."""
    lines = [line for line in text.splitlines() if line.strip()]
    return sum(len(line) > width for line in lines) <= 0.05 * len(lines)


def clean_gutenberg(text):
    text = text.replace("\r\n", "\n")
    if not _hard_wrapped(text):  # one paragraph a line (e.g. BabyLM's gutenberg.train)
        text = text.replace("\n", "\n\n")
    text = _SCAN_HYPHEN.sub(r"\1", text)
    text = _SPACE_PUNCT.sub(r"\1", _WS.sub(" ", _WRAP_HYPHEN.sub(r"\1", text)))
    docs, paras = [], []
    for block in re.split(r"\n\s*\n", text):
        para = block.replace("\n", " ").strip()
        heading = len(para) < 120 and _CHAPTER.match(para)
        if not para or not heading and (_PAGE_HEADER.match(para) or _ILLUSTRATION.match(para)):
            continue
        if heading or len(para) < 120 and not re.search(r"[a-z]", para):
            if paras:
                docs.append("\n".join(paras))
            paras = []
            continue
        para = _collapse(para.replace("_", ""))
        if not para:
            continue
        if paras and para[0].islower() and paras[-1][-1] not in _END:  # split by a dropped page header
            paras[-1] += " " + para
        else:
            paras.append(para)
    if paras:
        docs.append("\n".join(paras))
    return docs


def clean_childes(text):
    text = _CHAT_TIER.sub("", text)
    for pattern in _CHAT_CODES:
        text = pattern.sub(" ", text)
    text = _SPACE_PUNCT.sub(r"\1", _WS.sub(" ", text))
    lines = [line.strip() for line in text.splitlines() if _WORD.search(line)]
    return _chunks(lines, CHILDES_CHUNK)


def clean_switchboard(text):
    docs = []
    for call in re.split(r"\n\s*\n", text):
        turns = []
        for line in call.splitlines():
            m = _SPEAKER.match(line)
            body = _SPACE_PUNCT.sub(r"\1", _collapse(_TAG.sub(" ", line[m.end():] if m else line)))
            if body:
                turns.append(f"{m.group(1)}: {body}" if m else body)
        if turns:
            docs.append("\n".join(turns))
    return docs


def clean_generic(text):
    blocks = [b for b in re.split(r"\n\s*\n", text) if b.strip()]
    if len(blocks) == 1:
        blocks = _chunks(blocks[0].splitlines(), CHILDES_CHUNK)
    docs = ["\n".join(filter(None, map(_collapse, b.splitlines()))) for b in blocks]
    return [d for d in docs if d]


CLEANERS = {"gutenberg": clean_gutenberg, "childes": clean_childes,
            "switchboard": clean_switchboard, "generic": clean_generic}


def clean(text, source):
    """Clean raw `text` of `source` (a CLEANERS key) into a list of documents."""
    return CLEANERS[source](text)
