"""``smet-fork`` (the fork test, docs/fork_test.md): one update per arm, identical topology and batches,
control == the static run's own continuation, optimizer state switching, bad input, the CLI."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from smet.build import build_training
from smet.compose import compose
from smet.data import build_datamodule
from smet.fidelity import fork, fork_loop
from smet.sparse.optimizer import SMETOptimizer

REPO = Path(__file__).resolve().parents[1]
S, N = 10, 8  # fork point, window


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Bit equality between arms and a re-computation needs one intra-op thread: with two, CPU
    reductions may split differently between calls (the suite ran so, after in-process runs set it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def base_overrides(session_cache):
    cache = session_cache  # conftest.py: shared with the other end-to-end tests (same tokenizer recipe)
    return ["model=tiny", "model.hidden_size=64", "model.intermediate_size=128", "model.num_layers=2",
            "data=embedded", "trainer=cpu", "data.seq_len=32", "data.batch_size=8", "data.tokenizer.vocab_size=512",
            "trainer.max_steps=24", "sparsity.density=0.5", "optimizer.lr_scaling=none", "optimizer.warmup_steps=2",
            f"fork.at=[{S}]", f"fork.steps={N}", f"data.cache_dir={cache}"]


@pytest.fixture(scope="module")
def forked(base_overrides, tmp_path_factory):
    """The fork test with every treatment: (output dir, per-arm losses from fork.csv, summary)."""
    out = tmp_path_factory.mktemp("fork") / "out"
    lines = []
    fork.fork_test([*base_overrides, f"fork.out={out}"], log=lines.append)
    losses: dict[str, list[float]] = {}
    with open(out / "fork.csv") as f:
        for row in csv.DictReader(f):
            losses.setdefault(row["treatment"], []).append(float(row["loss"]))
    return out, losses, json.loads((out / "summary.json").read_text()), lines


@pytest.fixture(scope="module")
def pieces(base_overrides):
    """(base config, arms by name, datamodule, snapshot of the static run at S, batch S + 1), from the
    plan and a data pipeline read afresh."""
    base, arms, _, _ = fork.plan(base_overrides)
    dm = build_datamodule(base["data"])
    dm.prepare()
    dev = torch.device("cpu")
    batches = fork_loop.Batches(dm.train_dataloader())
    static, ssched = fork_loop.build(base, dev, dm.vocab_size)
    fork_loop.train(static, ssched, batches, range(1, S + 1), dev)
    return base, {a.name: a for a in arms}, dm, fork_loop.snapshot(static, ssched), batches.get(S + 1)


def test_one_update_per_arm_same_topology(forked, pieces):
    _, losses, summary, lines = forked
    res = {r["treatment"]: r for r in summary["results"]}
    assert list(res) == ["control", "naive", "reset_only", "smet", "warmup_only", "momentum_damping", "frozen"]
    assert res["control"]["updates"] == 0
    topo = {r["topology"] for name, r in res.items() if name != "control"}
    assert len(topo) == 1 and res["control"]["topology"] not in topo
    assert all(r["updates"] == 1 and r["regrown"] > 0 for name, r in res.items() if name != "control")
    assert all(len(v) == N for v in losses.values())
    assert sum("loss - control" in line for line in lines) == 6

    # the layers' idx after the update, compared directly between two arms of different optimizers
    base, arms, dm, snap, _ = pieces
    dev = torch.device("cpu")
    idx = {}
    for name in ("naive", "frozen"):
        tr, sched = fork_loop.build(arms[name].cfg, dev, dm.vocab_size)
        fork_loop.restore(tr, sched, snap)
        tr.controller.update_now(S)
        assert fork_loop.topology(tr.controller) in topo
        assert not tr.controller.is_update_step(S + 1) and not any(map(tr.controller.is_update_step, range(25)))
        idx[name] = [layer.idx.clone() for layer in tr.controller.layers]
    assert all(torch.equal(a, b) for a, b in zip(idx["naive"], idx["frozen"]))
    assert not all(torch.equal(a, b) for a, b in zip(idx["naive"], [v for k, v in snap["model"].items()
                                                                     if k.endswith(".idx")]))


def test_control_is_the_static_runs_own_continuation(forked, pieces):
    """The static run trained S + N steps without forking (ordinary build/step/schedule): the control
    arm's losses and LRs are its steps S+1..S+N, bit for bit."""
    out, losses, _, _ = forked
    base, _, dm, _, _ = pieces
    torch.manual_seed(int(base["seed"]))
    tr = build_training(base, "cpu", vocab_size=dm.vocab_size)
    sched = tr.scheduler()
    loader = iter(dm.train_dataloader())
    got, lrs = [], []
    for step in range(1, S + N + 1):
        b = next(loader)
        lrs.append(tr.optimizer.param_groups[0]["lr"])
        loss, _ = tr.step(b[:, :-1], b[:, 1:], step)
        sched.step()
        got.append(float(loss.detach()))
    assert losses["control"] == got[S:]
    with open(out / "fork.csv") as f:
        assert [float(r["lr"]) for r in csv.DictReader(f) if r["treatment"] == "control"] == lrs[S:]


def test_first_step_differs_from_control_only_through_the_update(forked, pieces):
    """Step S+1's loss is the forward before any treatment's optimizer acts: every updating arm has
    the same one, that of the updated model on an independently read batch S+1."""
    _, losses, _, _ = forked
    firsts = {name: v[0] for name, v in losses.items() if name != "control"}
    assert len(set(firsts.values())) == 1 and losses["control"][0] not in firsts.values()

    base, _, dm, snap, b = pieces
    static, ssched = fork_loop.build(base, torch.device("cpu"), dm.vocab_size)
    fork_loop.restore(static, ssched, snap)
    with torch.no_grad():
        assert float(static.model.loss(b[:, :-1], b[:, 1:])) == pytest.approx(losses["control"][0], rel=1e-6)
        static.controller.attach_optimizer(None)  # prune + regrow the static model itself
        static.controller.cfg.growth = "random"
        static.controller.update_now(S)
        # equal up to fp32 summation order (the arm ran in another model instance); the update itself
        # moves the loss by far more than that (here 1e-4 against 5e-7)
        updated = float(static.model.loss(b[:, :-1], b[:, 1:]))
        assert updated == pytest.approx(firsts["smet"], rel=1e-6)
        assert abs(updated - losses["control"][0]) > 50 * abs(updated - firsts["smet"])


# ----------------------------------------------------------------------------- optimizer state switching
def _run(cfg, steps, tr=None, state=None, gen_seed=0):
    torch.manual_seed(0)
    tr = tr or build_training(cfg, "cpu", vocab_size=128)
    if state is not None:  # a copy: a loaded optimizer state aliases the tensors it was given
        state = _copy(state)
        tr.model.load_state_dict(state[0])
        tr.controller.load_state_dict(state[1])
        tr.optimizer.load_state_dict(state[2])
    g = torch.Generator().manual_seed(gen_seed)
    for step in steps:
        b = torch.randint(0, 128, (4, 17), generator=g)
        tr.step(b[:, :-1], b[:, 1:], step)
    return tr


def _copy(x):
    import copy
    return copy.deepcopy(x)


def _state(tr):
    return _copy((tr.model.state_dict(), tr.controller.state_dict(), tr.optimizer.state_dict()))


def _cfg(method):
    return compose(["model=tiny", f"sparsity={method}", "data.seq_len=16", "trainer.max_steps=50",
                    "optimizer.lr_scaling=none", "sparsity.update_interval=1000"])


def test_static_state_loads_into_smet_as_mature():
    static = _run(_cfg("static"), range(1, 4))
    assert not static.optimizer.tracks_local_steps
    smet = _run(_cfg("smet"), [], state=_state(static))
    opt: SMETOptimizer = smet.optimizer
    sparse = [p for g in opt.param_groups if g["sparse"] for p in g["params"]]
    for p in sparse:
        lt = opt.local_steps(p)
        assert lt.numel() == p.numel() and bool((lt == 3).all())
        assert not bool(opt.state[p]["regrow_code"].any())  # code 0: alive since initialisation
    # mature slots: SMET's next steps are the static optimizer's (bias correction by the same step, no ramp)
    _run(None, range(4, 6), tr=static, gen_seed=1)
    _run(None, range(4, 6), tr=smet, gen_seed=1)
    for a, b in zip(static.model.parameters(), smet.model.parameters()):  # fp32 bias-correction table vs
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)                 # AdamW's float64 scalars
    assert all(bool((opt.local_steps(p) == 5).all()) for p in sparse)
    # frozen: W = 1e9 gives int32 local steps (counters), still mature
    frozen = _run(compose(["model=tiny", "sparsity=smet", "data.seq_len=16", "trainer.max_steps=50",
                           "optimizer.lr_scaling=none", "optimizer.regrowth_warmup_steps=1000000000",
                           "optimizer.local_step_storage=counter"]), [], state=_state(static))
    assert all(frozen.optimizer.state[p]["local_step"].dtype == torch.int32 for p in
               [p for g in frozen.optimizer.param_groups if g["sparse"] for p in g["params"]])


def test_smet_state_loads_into_static_and_round_trips():
    smet = _run(_cfg("smet"), range(1, 4))
    smet.controller.update_now(3)  # regrown slots: local step 0
    _run(None, range(4, 6), tr=smet, gen_seed=1)
    st = _state(smet)
    # into an optimizer that tracks no local steps: dropped
    static = _run(_cfg("static"), [], state=st)
    assert all(not {"local_step", "regrow_code", "regrow_birth"} & s.keys() for s in static.optimizer.state.values())
    _run(None, [6], tr=static)
    # ordinary round trips: unchanged, bits and dtypes
    again = _run(_cfg("smet"), [], state=st)
    params = lambda tr: [p for g in tr.optimizer.param_groups for p in g["params"]]  # noqa: E731
    for p, q in zip(params(smet), params(again)):
        a, b = smet.optimizer.state[p], again.optimizer.state[q]
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])), k
    lts = [again.optimizer.local_steps(q) for q in params(again) if "regrow_code" in again.optimizer.state[q]]
    assert lts and any(bool((lt < 5).any()) for lt in lts)
    st2 = _state(static)
    back = _run(_cfg("static"), [], state=st2)
    assert all(not {"local_step", "regrow_code", "regrow_birth"} & s.keys() for s in back.optimizer.state.values())


# ----------------------------------------------------------------------------- bad input, CLI
@pytest.mark.parametrize("extra, key", [
    (["fork.treatments=[control,bogus]"], "fork.treatments"),
    (["fork.at=[0]"], "fork.at"),
    (["fork.at=[17]"], "fork.at"),  # > max_steps - steps = 16
    (["fork.at=[20,10]"], "fork.at"),
    (["fork.steps=0"], "fork.steps"),
    (["sparsity=dense"], "sparsity"),
    (["sparsity.density=1.0"], "sparsity.density"),
    (["fork.arms.naive.overrides=['sparsity=set','sparsity.density=0.25']"], "fork.arms.naive"),
    (["fork.arms.smet.overrides=['sparsity=smet','optimizer.lr_scaling=inverse']", "fork.treatments=[smet]"],
     "fork.arms.smet"),  # an arm with 1/d scaling: another LR than the base run's
    (["fork.treatments=[smet]"], "fork.out"),  # the existing, non-empty output dir
])
def test_bad_input_exits_2_naming_the_key(base_overrides, tmp_path, capsys, extra, key):
    out = tmp_path / "out"
    if key == "fork.out":
        out.mkdir()
        (out / "keep.txt").write_text("x")
    overrides = [o for o in base_overrides if f"-{o}" not in extra] + [o for o in extra if not o.startswith("-")]
    assert fork.main([*overrides, f"fork.out={out}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"smet-fork: error: {key}"), err
    assert (sorted(p.name for p in out.iterdir()) == ["keep.txt"]) if key == "fork.out" else not out.exists()


def test_cli_end_to_end(base_overrides, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    r = subprocess.run([sys.executable, "-m", "smet.fidelity.fork", *base_overrides, "fork.at=[4]", "fork.steps=3",
                        "fork.treatments=[smet]", f"fork.out={out}"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["fork.csv", "fork.png", "summary.json"]
    assert str(out / "summary.json") in r.stdout and "fork at 4: smet" in r.stdout
    rows = list(csv.DictReader(open(out / "fork.csv")))
    assert list(rows[0]) == ["at", "treatment", "step", "loss", "lr"] and len(rows) == 2 * 3
    summary = json.loads((out / "summary.json").read_text())
    assert {"config", "results", "env"} <= set(summary) and summary["env"]["torch"] == torch.__version__
    smet = next(x for x in summary["results"] if x["treatment"] == "smet")
    assert {"mean_diff_10", "mean_diff_50", "mean_diff_all", "max_diff", "max_diff_step", "final_diff"} <= set(smet)
    assert (out / "fork.png").read_bytes()[:4] == b"\x89PNG"
    h = subprocess.run([sys.executable, "-m", "smet.fidelity.fork", "--help"], capture_output=True, text=True)
    assert h.returncode == 0 and "usage: smet-fork" in h.stdout
