"""Fidelity study (issue 7): the kjv_wiki corpus, the three experiment grids, the runner and its outputs."""

from __future__ import annotations

import bz2
import importlib.metadata
import json
import stat
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from smet.config import validate
from smet.data import build_datamodule, parse_data_config
from smet.data import wiki
from smet.data.corpus import PackagedCorpus
from smet.errors import SmetConfigError

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
FIDELITY = ("fidelity", "fidelity_warmup", "fidelity_lr_scaling")
try:
    importlib.metadata.distribution("gensim")
    HAVE_GENSIM = True
except importlib.metadata.PackageNotFoundError:
    HAVE_GENSIM = False

PAGE = """  <page>
    <title>{title}</title>
    <ns>{ns}</ns>
    <id>{id}</id>{redirect}
    <revision><id>1</id><text xml:space="preserve">{text}</text></revision>
  </page>
"""


def _body(i: int) -> str:
    para = (f"'''Article {i}''' is about [[Topic {i}|topic number {i}]] and [[Other]].{{{{cite|x={{{{nested}}}}}}}}"
            f"&lt;ref&gt;A reference&lt;/ref&gt; More text on subject {i} follows here. ")
    return "\n".join([para * 6, "== History ==", "* first point", "* second point",
                      "[[Category:Things]] [[de:Artikel]]", para * 4])


def make_dump(path: Path, n: int = 24) -> Path:
    """A small MediaWiki XML export (bz2) in the layout of gensim's test file."""
    pages = []
    for i in range(n):
        pages.append(PAGE.format(title=f"Article {i}", ns=0, id=i + 10, redirect="", text=_body(i)))
    pages.append(PAGE.format(title="Redirect page", ns=0, id=900, redirect='\n    <redirect title="Article 1" />',
                             text="#REDIRECT [[Article 1]]"))
    pages.append(PAGE.format(title="Talk:Article 1", ns=1, id=901, redirect="", text=_body(1)))
    xml = ('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10">\n'
           + "".join(pages) + "</mediawiki>\n")
    path.write_bytes(bz2.compress(xml.encode("utf-8")))
    return path


@pytest.fixture
def fake_enwiki(tmp_path, monkeypatch) -> Path:
    dump = make_dump(tmp_path / wiki.ENWIKI_FILE)
    monkeypatch.setattr(wiki, "locate_enwiki", lambda: dump)
    return dump


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose(config_name="train", overrides=list(overrides))


# ----------------------------------------------------------------------------- wikitext
def test_clean_wikitext_keeps_running_text_only():
    src = textwrap.dedent("""\
        {{Infobox person|name=X|birth={{birth date|1900|1|1}}}}
        '''Ada''' was a ''mathematician''<ref name="a">Cite {{cite book|t=1}}</ref> from [[London|the city]].
        <!-- hidden comment -->
        == Early life ==
        She met [[Charles Babbage]] in 1833.<ref name="b" /> See [http://example.org the site].
        {| class="wikitable"
        | a || b
        |}
        [[File:Ada.jpg|thumb|Portrait of [[Ada Lovelace|Ada]]]]
        * A list item &amp; more
        [[Category:Mathematicians]]
        [[fr:Ada Lovelace]]""")
    out = wiki.clean_wikitext(src)
    assert out.splitlines()[0] == "Ada was a mathematician from the city."
    assert "Early life" in out and "She met Charles Babbage in 1833. See the site." in out
    assert "A list item & more" in out
    for junk in ("{{", "}}", "[[", "]]", "<ref", "Cite", "Infobox", "wikitable", "Portrait", "Category",
                 "hidden", "fr:", "'''", "http"):
        assert junk not in out, junk


def test_read_dump_skips_redirects_and_other_namespaces(tmp_path):
    dump = make_dump(tmp_path / "dump.xml.bz2", n=5)
    pages = wiki.read_mediawiki_pages(dump)
    assert [t for t, _ in pages] == [f"Article {i}" for i in range(5)]
    arts = wiki.wiki_articles(dump)
    assert len(arts) == 5 and arts[0][1].startswith("Article 0\n\nArticle 0 is about topic number 0 and Other.")


# ----------------------------------------------------------------------------- corpus
def test_packaged_corpus_split_is_deterministic_by_whole_documents(fake_enwiki):
    a = PackagedCorpus(["kjv", "enwiki"], 0.1).load_split()
    b = PackagedCorpus(["kjv", "enwiki"], 0.1).load_split()
    assert (a.train_keys, a.val_keys) == (b.train_keys, b.val_keys) and a.train_texts == b.train_texts
    assert not set(a.train_keys) & set(a.val_keys)
    for src in ("kjv", "enwiki"):  # both sources in both splits
        assert any(k.startswith(f"{src}:") for k in a.train_keys), src
        assert any(k.startswith(f"{src}:") for k in a.val_keys), src
    info = a.info["sources"]
    # whole books / whole articles held out, at least val_fraction of each source's characters
    val_books = set(info["kjv"]["val_books"])
    assert val_books == set(a.info["val_books"]) and val_books
    assert all(k.split(":", 1)[1].rsplit(" ", 1)[0] in val_books for k in a.val_keys if k.startswith("kjv:"))
    assert not any(k.split(":", 1)[1].rsplit(" ", 1)[0] in val_books for k in a.train_keys if k.startswith("kjv:"))
    assert sorted(k[len("enwiki:"):] for k in a.val_keys if k.startswith("enwiki:")) == sorted(info["enwiki"]["val_articles"])
    for src in info.values():
        assert src["val_chars"] >= 0.1 * src["n_chars"]
    # the KJV part is split exactly as the embedded corpus splits it
    from smet.data.corpus import EmbeddedCorpus

    kjv = EmbeddedCorpus(0.1).load_split()
    assert [k for k in a.val_keys if k.startswith("kjv:")] == [f"kjv:{k}" for k in kjv.val_keys]
    # fingerprints: stable, and different for another split
    assert PackagedCorpus(["kjv", "enwiki"], 0.1).fingerprint() == PackagedCorpus(["kjv", "enwiki"], 0.1).fingerprint()
    assert PackagedCorpus(["kjv", "enwiki"], 0.1).fingerprint() != PackagedCorpus(["kjv", "enwiki"], 0.2).fingerprint()


def test_kjv_wiki_preset_tokenizer_and_token_cache(fake_enwiki, tmp_path):
    cfg = compose_cfg("data=kjv_wiki", f"data.cache_dir={tmp_path / 'cache'}", "data.seq_len=64")
    validate(cfg)
    assert list(cfg.data.corpora) == ["kjv", "enwiki"]
    dm = build_datamodule(cfg.data).prepare()
    st = dm.stats
    assert st["tokenizer_trained"] and not st["tokens_cached"] and st["n_val_docs"] > 0
    keys = dm.doc_keys()
    assert any(k.startswith("enwiki:") for k in keys["val"]) and any(k.startswith("kjv:") for k in keys["val"])
    again = build_datamodule(cfg.data).prepare()
    assert not again.stats["tokenizer_trained"] and again.stats["tokens_cached"]
    assert again.stats["tokens_dir"] == st["tokens_dir"]
    assert again.unigram_perplexity() == pytest.approx(dm.unigram_perplexity())
    # the plain KJV preset keeps its own cache entry (unchanged fingerprint, no enwiki)
    kjv = build_datamodule(compose_cfg("data=embedded", f"data.cache_dir={tmp_path / 'cache'}").data)
    assert type(kjv.corpus).__name__ == "EmbeddedCorpus"


def test_missing_gensim_is_a_clear_config_error(monkeypatch):
    real = importlib.metadata.distribution

    def fake(name):
        if name == "gensim":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", fake)
    with pytest.raises(SmetConfigError) as e:
        build_datamodule(compose_cfg("data=kjv_wiki").data)
    assert e.value.key == "data.corpora"
    assert "'gensim'" in str(e.value) and "pip install" in str(e.value)


@pytest.mark.parametrize("override,msg", [
    ("data.corpora=[kjv,bogus]", "unknown corpus 'bogus'"),
    ("data.corpora=[kjv,kjv]", "twice"),
    ("data.corpora=[]", "non-empty"),
])
def test_bad_corpora_fail_validation(override, msg):
    with pytest.raises(SmetConfigError, match=msg):
        validate(compose_cfg("data=kjv_wiki", override))


def test_corpora_only_with_embedded_source(tmp_path):
    with pytest.raises(SmetConfigError, match="data.source=embedded only"):
        parse_data_config({"source": "local_files", "path": str(tmp_path), "corpora": ["kjv"]})


@pytest.mark.skipif(not HAVE_GENSIM, reason="gensim not installed (pip install --no-deps 'gensim>=4.3')")
def test_real_gensim_wikipedia_file():
    path = wiki.locate_enwiki()
    arts = wiki.wiki_articles(path)
    assert len(arts) >= 100 and 2_500_000 < sum(len(t) for _, t in arts) < 3_500_000
    titles = [t for t, _ in arts]
    assert "Anarchism" in titles and "Albedo" in titles and len(set(titles)) == len(titles)
    text = dict(arts)["Albedo"]
    assert "{{" not in text and "[[" not in text and "<ref" not in text and "reflect" in text


# ----------------------------------------------------------------------------- experiments
COMMON = ("model", "data", "sparsity.density", "sparsity.update_interval", "optimizer", "trainer", "seed")


def test_fidelity_experiments_share_their_settings():
    cfgs = {e: compose_cfg(f"+experiment={e}") for e in FIDELITY}
    for cfg in cfgs.values():
        validate(cfg)
        assert cfg.model.name == "20m" and cfg.data.name == "kjv_wiki" and cfg.sparsity.method == "smet"
        assert cfg.sparsity.density == 0.25 and cfg.sparsity.update_interval == 100
        assert cfg.trainer.log_every_n_steps == 1
    base = cfgs["fidelity"]
    for e, cfg in cfgs.items():
        for key in COMMON:
            assert OmegaConf.select(cfg, key) == OmegaConf.select(base, key), (e, key)
    grids = {e: OmegaConf.load(CONF / "experiment" / f"{e}.yaml").hydra.sweeper.params for e in FIDELITY}
    assert grids["fidelity"]["sparsity"] == "dense,static,set,rigl,smet,smet_no_reset"
    assert grids["fidelity_warmup"]["optimizer.regrowth_warmup_steps"] == "0,10,100"
    assert grids["fidelity_lr_scaling"]["optimizer.lr_scaling"] == "none,inverse,inverse_sqrt"
    assert all(g["seed"] == "0,1" for g in grids.values())


def test_plan_dedupes_and_orders_by_seed():
    from smet.fidelity.plan import plan

    runs = plan(overrides=["trainer=gpu", "trainer.precision=bf16-mixed"])
    names = [r.name for r in runs]
    assert len(runs) == 20 and len(set(names)) == 20
    assert [r.seed for r in runs] == [0] * 10 + [1] * 10
    assert names[:10] == ["dense-s0", "static-s0", "set-s0", "rigl-s0", "smet-s0", "smet_no_reset-s0",
                          "W0-s0", "W10-s0", "lr_none-s0", "lr_inverse_sqrt-s0"]
    smet = runs[names.index("smet-s0")]
    assert len(smet.duplicates) == 2  # fidelity_warmup W=100 and fidelity_lr_scaling inverse
    assert smet.train_command().startswith("python train.py sparsity=smet seed=0 +experiment=fidelity trainer=gpu")


# ----------------------------------------------------------------------------- runner
FAKE_TRAIN = """#!{python}
import json, os, sys, time
args = sys.argv[2:]
run_dir = [a.split("=", 1)[1] for a in args if a.startswith("hydra.run.dir=")][0]
os.makedirs(run_dir, exist_ok=True)
seed = [a.split("=", 1)[1] for a in args if a.startswith("seed=")][0]
with open(os.path.join(run_dir, "config.yaml"), "w") as f:
    f.write("seed: %s\\nsparsity:\\n  method: smet\\n  density: 0.25\\nmodel:\\n  name: tiny\\n" % seed)
with open(os.path.join(run_dir, "metrics.csv"), "w") as f:
    f.write("step,train/loss,val/ppl\\n0,5.0,\\n1,4.0,90.0\\n")
time.sleep(float(os.environ.get("FAKE_SLEEP", "0.2")) * (1 + int(seed) * 20))
with open(os.path.join(run_dir, "summary.json"), "w") as f:
    json.dump({{"steps": 2, "val_ppl": 90.0, "tokens_per_s": 100.0, "status": os.environ.get("FAKE_STATUS", "ok")}}, f)
time.sleep(float(os.environ.get("FAKE_TEARDOWN", "0")))  # e.g. loggers / process teardown after the summary
"""


def _fake_python(tmp_path: Path) -> Path:
    p = tmp_path / "fake_python"
    p.write_text(FAKE_TRAIN.format(python=sys.executable))
    p.chmod(p.stat().st_mode | stat.S_IEXEC)
    return p


def test_runner_budget_skips_and_stops_then_packs(tmp_path):
    from smet.fidelity.plan import PlannedRun
    from smet.fidelity.publish import pack, publish
    from smet.fidelity.runner import run_all
    from smet.fidelity.summary import summary_rows

    runs = [PlannedRun(name=f"r{i}-s{s}", experiment="fidelity", overrides=[f"seed={s}"], seed=s)
            for s in (0, 1) for i in range(2)]
    out = tmp_path / "out"
    # seed 0 runs take ~0.2 s, seed 1 runs ~4 s: with a 2.5 s budget both seed-1 runs start
    # (est. 0.2 s) and are stopped at the budget
    run_all(runs, out, parallel=2, budget_s=2.5, python=str(_fake_python(tmp_path)), repo=REPO, poll_s=0.05,
            log=lambda m: None)
    status = {r.name: r.status for r in runs}
    assert status == {"r0-s0": "ok", "r1-s0": "ok", "r0-s1": "stopped", "r1-s1": "stopped"}, status
    state = json.loads((out / "runs.json").read_text())
    assert [r["status"] for r in state["runs"]] == ["ok", "ok", "stopped", "stopped"]
    assert (out / "logs" / "r0-s0.log").read_text().startswith("$ ")
    rows = {r["run"]: r for r in summary_rows(out)}
    assert rows["r0-s0"]["val_ppl"] == 90.0 and rows["r0-s1"]["status"] == "stopped"

    # a run that cannot finish within the budget (judged from the finished ones) is not started
    runs2 = [PlannedRun(name="slow-s1", experiment="fidelity", overrides=["seed=1"], seed=1),
             PlannedRun(name="next-s1", experiment="fidelity", overrides=["seed=1"], seed=1)]
    run_all(runs2, tmp_path / "out2", parallel=1, budget_s=6.0, python=str(_fake_python(tmp_path)), repo=REPO,
            poll_s=0.05, log=lambda m: None)
    assert [r.status for r in runs2] == ["ok", "skipped"] and "budget" in runs2[1].note

    tar = tmp_path / "res.tar.gz"
    names = pack(out, tar)
    assert "runs/r0-s0/metrics.csv" in names and not any("checkpoints" in n for n in names)
    with tarfile.open(tar) as tf:
        assert "fidelity/runs.json" in tf.getnames()
    written = publish(tar, tmp_path / "pub")
    assert {p.name for p in written} >= {"runs.json", "run_summaries.json", "curves.csv.gz", "updates.csv",
                                          "runs_table.md"}
    assert "r0-s0" in (tmp_path / "pub" / "runs_table.md").read_text()
    # --recompare: the report comes from this checkout's smet-compare over the packed runs
    written = publish(tar, tmp_path / "pub2", recompare=True, title="recompared")
    assert {p.name for p in written} >= {"report.md", "summary.md", "summary.csv", "runs.csv", "loss_curves.png"}
    md = (tmp_path / "pub2" / "report.md").read_text()
    assert md.startswith("# recompared") and "`runs/r0-s0`" in md and "paired spike vs static" in md
    assert not (tmp_path / "pub2" / "report.html").exists()


def test_runner_counts_a_run_stopped_in_teardown_as_finished(tmp_path, monkeypatch):
    """A run killed at the budget after writing summary.json finished its training: status ok, with a note."""
    from smet.fidelity.plan import PlannedRun
    from smet.fidelity.runner import run_all

    monkeypatch.setenv("FAKE_TEARDOWN", "30")
    runs = [PlannedRun(name="r0-s0", experiment="fidelity", overrides=["seed=0"], seed=0)]
    run_all(runs, tmp_path / "out", parallel=1, budget_s=1.5, python=str(_fake_python(tmp_path)), repo=REPO,
            poll_s=0.05, log=lambda m: None)
    assert runs[0].status == "ok" and "teardown" in runs[0].note


def test_runner_counts_an_interrupted_summary_as_stopped(tmp_path, monkeypatch):
    """train.py's SIGTERM handler writes summary.json with status interrupted (steps short of max_steps):
    that run did not finish, whether it exits itself or is killed at the budget."""
    from smet.fidelity.plan import PlannedRun
    from smet.fidelity.runner import run_all

    monkeypatch.setenv("FAKE_STATUS", "interrupted")
    runs = [PlannedRun(name="r0-s0", experiment="fidelity", overrides=["seed=0"], seed=0)]
    run_all(runs, tmp_path / "out", parallel=1, budget_s=30, python=str(_fake_python(tmp_path)), repo=REPO,
            poll_s=0.05, log=lambda m: None)
    assert runs[0].status == "stopped"
    monkeypatch.setenv("FAKE_TEARDOWN", "30")
    runs = [PlannedRun(name="r1-s0", experiment="fidelity", overrides=["seed=0"], seed=0)]
    run_all(runs, tmp_path / "out2", parallel=1, budget_s=1.5, python=str(_fake_python(tmp_path)), repo=REPO,
            poll_s=0.05, log=lambda m: None)
    assert runs[0].status == "stopped" and "teardown" not in runs[0].note


def test_gpu_fidelity_script_is_valid_bash():
    import subprocess

    r = subprocess.run(["bash", "-n", str(REPO / "scripts" / "gpu-fidelity.sh")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
