"""scripts/prep-debian-corpus.py / smet.data.debian on tiny .deb fixtures (no network), and the
data=debian_docs preset reading the output through the local-files loader."""

from __future__ import annotations

import gzip
import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from smet.data import debian
from smet.data.config import parse_data_config
from smet.data.corpus import make_corpus

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")

RST = "Tutorial\n========\n\nPython is an *easy* language.\n\n.. note::\n\n   Indented note.\n"
POD = """=pod

=encoding utf8

=head1 NAME

perlfoo - the B<foo> operator

=head1 DESCRIPTION

Use C<foo()> with L<perlfunc/open> or L<the docs|perldoc>; E<lt>tagE<gt>.X<foo>

=begin html

<b>skip me</b>

=end html

=for comment skipped too
still the comment

    my $x = C<verbatim>;

=over 4

=item bar

Bar text.

=back

=cut
"""
GCIDE = ['Abate \\A*bate"\\, v. t. [OF. {abatre} to beat down]\n   1. To lessen; <i>to</i> diminish &amp; reduce.\n'
         '      [1913 Webster]\n\n   2. To deduct <ae/ther.\n      [PJC]\n',
         'Zebra \\Ze"bra\\, n. A striped {horse}, Br["u]cke.\n   [1913 Webster]\n']


def _b64(n: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    s = ""
    while True:
        s = alphabet[n % 64] + s
        n //= 64
        if not n:
            return s


def build_deb(tmp: Path, package: str, version: str, files: dict[str, bytes]) -> Path:
    root = tmp / "build" / package
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: all\nMaintainer: t <t@example.org>\n"
        "Description: test fixture\n")
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    deb = tmp / "work" / "debs" / f"{package}_{version}_all.deb"
    deb.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(deb)], check=True,
                   capture_output=True)
    return deb


@pytest.fixture()
def fixture_debs(tmp_path):
    dictdata, index, off = b"", [], 0
    for word, entry in zip(("abate", "zebra"), GCIDE):
        data = entry.encode()
        index.append(f"{word}\t{_b64(off)}\t{_b64(len(data))}")
        dictdata += data
        off += len(data)
    index.insert(0, f"00-database-info\t{_b64(0)}\t{_b64(5)}")
    index.append(f"Abate\t{_b64(0)}\t{_b64(len(GCIDE[0].encode()))}")  # same entry under two headwords
    build_deb(tmp_path, "python3.11-doc", "3.11.2-6", {
        "usr/share/doc/python3.11/html/_sources/tutorial/index.rst.txt": RST.encode(),
        "usr/share/doc/python3.11/html/library/index.html": b"<html>boilerplate</html>",
    })
    build_deb(tmp_path, "linux-doc-6.1", "6.1.1-1", {
        "usr/share/doc/linux-doc-6.1/Documentation/process/howto.rst.gz": gzip.compress(b"HOWTO\n=====\n\nKernel text.\n"),
        "usr/share/doc/linux-doc-6.1/Documentation/admin/notes.txt": b"Plain notes.\n",
        "usr/share/doc/linux-doc-6.1/Documentation/translations/it_IT/howto.rst": b"Testo italiano.\n",
        "usr/share/doc/linux-doc-6.1/Documentation/logo.txt": b"\x00\x01binary",
        "usr/share/doc/linux-doc-6.1/Documentation/bindings/x.yaml": b"a: 1\n",
    })
    build_deb(tmp_path, "perl-doc", "5.36.0-7", {"usr/share/perl/5.36.0/pod/perlfoo.pod": POD.encode()})
    build_deb(tmp_path, "dict-gcide", "0.48.5", {
        "usr/share/dictd/gcide.index": ("\n".join(index) + "\n").encode(),
        "usr/share/dictd/gcide.dict.dz": gzip.compress(dictdata),
    })
    return tmp_path


def _no_apt(*a, **k):
    raise AssertionError("tests must not download")


def test_extraction_markup_and_manifest(fixture_debs, monkeypatch):
    monkeypatch.setattr(debian, "_run", lambda cmd, cwd=None: _no_apt() if cmd[0] == "apt-get"
                        else subprocess.run(cmd, cwd=cwd, capture_output=True, text=True))
    out, work = fixture_debs / "out", fixture_debs / "work"
    manifest = debian.build(list(debian.DEFAULT_PACKAGES), [], out, work, xz=True, log=lambda m: None)

    py = debian.read_jsonl(out / "python3.11-doc.jsonl")
    assert [(d["path"], d["source"]) for d in py] == [("tutorial/index.rst.txt", "python3.11-doc")]
    assert py[0]["text"] == RST.strip()  # reST as is, HTML skipped

    linux = {d["path"]: d["text"] for d in debian.read_jsonl(out / "linux-doc-6.1.jsonl")}
    assert linux == {"admin/notes.txt": "Plain notes.", "process/howto.rst.gz": "HOWTO\n=====\n\nKernel text."}

    (perl,) = debian.read_jsonl(out / "perl-doc.jsonl")
    t = perl["text"]
    assert perl["path"] == "perlfoo.pod" and t.startswith("NAME\n\nperlfoo - the foo operator")
    assert "Use foo() with perlfunc/open or the docs; <tag>." in t
    assert "    my $x = C<verbatim>;" in t and "Bar text." in t and "bar" in t
    assert "=" not in t.replace("$x =", "") and "skip me" not in t and "comment" not in t

    gc = debian.read_jsonl(out / "dict-gcide.jsonl")
    assert [d["path"] for d in gc] == ["abate", "zebra"]  # 00-database-* and the duplicate headword skipped
    assert gc[0]["text"] == "Abate, v. t. [OF. abatre to beat down]\n   1. To lessen; to diminish & reduce.\n\n   2. To deduct \u00e6ther."
    assert gc[1]["text"] == "Zebra, n. A striped horse, Br\u00fccke."

    src = manifest["sources"]
    assert src["perl-doc"]["version"] == "5.36.0-7" and src["dict-gcide"]["documents"] == 2
    assert src["linux-doc-6.1"]["licence"].startswith("GPL-2.0")
    on_disk = json.loads((out / "MANIFEST.json").read_text())
    for name, s in on_disk["sources"].items():
        assert s["sha256"] == debian._sha256(out / s["file"]) and s["words"] > 0
    assert on_disk["totals"]["documents"] == 6
    tar = fixture_debs / "out.tar.xz"
    before = {p.name: p.read_bytes() for p in [*out.iterdir(), tar]}
    debian.build(list(debian.DEFAULT_PACKAGES), [], out, work, xz=True, log=lambda m: None)  # idempotent
    assert {p.name: p.read_bytes() for p in [*out.iterdir(), tar]} == before


def _script():
    spec = importlib.util.spec_from_file_location("prep", REPO / "scripts" / "prep-debian-corpus.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("args,option", [
    (["--packages", "emacs-common-non-dfsg"], "--packages"),
    (["--extras", "bogus"], "--extras"),
    (["--packages", "perl-doc,perl-doc"], "--packages"),
    (["--packages", "none", "--extras", "none"], "--packages"),
])
def test_bad_input_one_line_exit_2(args, option, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(debian, "download", _no_apt)
    rc = _script().main(["--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"prep-debian-corpus: error: {option}:")
    assert not (tmp_path / "o").exists()


def test_out_is_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert _script().main(["--out", str(tmp_path / "f"), "--packages", "perl-doc"]) == 2
    assert "--out:" in capsys.readouterr().err


def test_preset_composes_and_loader_reads_output(fixture_debs, monkeypatch, tmp_path):
    out = fixture_debs / "out"
    debian.build(["python3.11-doc", "dict-gcide", "perl-doc"], [], out, fixture_debs / "work", log=lambda m: None)
    monkeypatch.setenv("SMET_DEBIAN_CORPUS", str(out))
    monkeypatch.setenv("SMET_CACHE_DIR", str(tmp_path / "cache"))
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose(config_name="train", overrides=["data=debian_docs"])
    assert cfg.data.path == f"{out}/*.jsonl"
    corpus = make_corpus(parse_data_config(cfg.data))
    assert sorted(f.name for f in corpus.files) == ["dict-gcide.jsonl", "perl-doc.jsonl", "python3.11-doc.jsonl"]
    split = corpus.load_split()  # MANIFEST.json is not read as data
    keys = sorted(split.train_keys + split.val_keys)
    assert keys == ["dict-gcide.jsonl:0", "dict-gcide.jsonl:1", "perl-doc.jsonl:0", "python3.11-doc.jsonl:0"]
    assert split.n_val_docs >= 1 and split.n_train_docs >= 1
    assert any(t.startswith("Zebra, n.") for t in split.train_texts + split.val_texts)
