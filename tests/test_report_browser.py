"""smet-compare's report.html in a real headless browser (Debian's chromium).

Builds a report from small real runs (`train.py -m` with model=tiny: a W ablation of SMET plus a
dense baseline, 12 steps each; a copy of one run as an identical duplicate, and one without
summary.json as a crashed run), then lets chromium (1) load a copy of report.html with a tiny script
that writes every <img>'s load state and natural size into document.title, read back with
--dump-dom, and (2) screenshot the page, which must not be blank. Skipped, saying so, only when
chromium is not installed: `scripts/browser-install.sh` installs it (CI's .ci/run does).
Set SMET_KEEP_SCREENSHOT=/some/file.png to keep the screenshot for a look.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FAST, REPO
from smet.cli.compare import main

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(BROWSER is None, reason="chromium is not installed (run scripts/browser-install.sh "
                                                         "as root: apt-get install chromium)")]

PROBE = """<script>
window.addEventListener("load", function () {
  var ims = Array.prototype.slice.call(document.images);
  document.title = "IMGS:" + JSON.stringify(ims.map(function (i) {
    return [i.title, i.complete, i.naturalWidth, i.naturalHeight]; }));
});
</script>"""


def chromium(user_dir: Path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={user_dir}", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"chromium failed ({res.returncode}):\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def report(session_cache, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser_runs")
    env = dict(os.environ, SMET_CACHE_DIR=str(session_cache), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    common = ["model=tiny", "trainer.max_steps=12", "trainer.val_every_n_steps=6", *FAST]
    jobs = [["-m", "sparsity=smet", "optimizer.regrowth_warmup_steps=0,100", "sparsity.update_interval=4",
             "++sparsity.spike_window=2", f"hydra.sweep.dir={root / 'sweep'}"],
            ["sparsity=dense", f"hydra.run.dir={root / 'sweep' / 'dense'}"]]
    for extra in jobs:
        res = subprocess.run([sys.executable, str(REPO / "train.py"), *extra, *common], cwd=root, capture_output=True,
                             text=True, timeout=400, env=env)
        assert res.returncode == 0, f"train.py failed:\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
    runs = root / "sweep"
    ign = shutil.ignore_patterns("checkpoints")
    shutil.copytree(runs / "0", runs / "0-again", ignore=ign)          # the same run twice
    shutil.copytree(runs / "1", runs / "1-died", ignore=ign)           # no summary, stale metrics
    (runs / "1-died" / "summary.json").unlink()
    cfg = runs / "1-died" / "config.yaml"
    cfg.write_text(cfg.read_text().replace("seed: 1234", "seed: 99"))
    old = time.time() - 3 * 3600
    for f in ("metrics.csv", "train.log"):
        if (runs / "1-died" / f).exists():
            os.utime(runs / "1-died" / f, (old, old))
    out = root / "report"
    assert main([str(runs), "--out", str(out), "--title", "browser check"]) == 0
    return out


def test_every_figure_loads_in_chromium(report, tmp_path):
    page = (report / "report.html").read_text()
    n_img = page.count("<img ")
    assert n_img >= 5 and page.count('src="data:image/png;base64,') == n_img  # self-contained
    probe = tmp_path / "probe.html"  # a copy: the report itself carries no script
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    res = chromium(tmp_path / "profile", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    m = re.search(r"<title>IMGS:(.*?)</title>", res.stdout, re.S)
    assert m, f"probe did not run; DOM head: {res.stdout[:500]!r}"
    imgs = json.loads(m.group(1).replace("&amp;", "&").replace("&quot;", '"'))
    assert len(imgs) == n_img
    for title, complete, w, h in imgs:
        assert complete and w >= 300 and h >= 200, (title, complete, w, h)
    names = {t for t, *_ in imgs}
    assert {"loss_curves.png", "curves_vs_tokens.png", "ppl_vs_W.png"} <= names


def test_screenshot_is_not_blank(report, tmp_path):
    import numpy as np
    from matplotlib import image

    png = tmp_path / "report.png"
    chromium(tmp_path / "profile", "--hide-scrollbars", f"--screenshot={png}", "--window-size=1400,3000",
             "--virtual-time-budget=10000", (report / "report.html").as_uri())
    assert png.is_file() and png.stat().st_size > 20_000
    px = image.imread(png)[..., :3]
    assert px.shape[0] == 3000 and px.shape[1] == 1400
    ink = (px.min(axis=2) < 0.9).mean()  # share of pixels that are not (near) white
    colours = len(np.unique((px[::4, ::4] * 31).astype(np.uint8).reshape(-1, 3), axis=0))
    assert ink > 0.03 and colours > 40, (ink, colours)
    keep = os.environ.get("SMET_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(png, keep)
    page = (report / "report.html").read_text()
    assert "crashed" in page and "duplicate (not counted)" in page and "smet W=0" in page
