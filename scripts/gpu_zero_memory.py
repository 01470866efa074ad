"""Issue 17 on one GPU: per-rank memory of DeepSpeed ZeRO-1/2, measured vs predicted, and where a ZeRO step's time goes.

World size 1 (ZeRO's flat buffers, fp32 master and partition code still run). For each stage, SMET and dense AdamW,
the model of ``--model`` (bf16: DeepSpeed's bf16 mode, Lightning's ``DeepSpeedStrategy(stage=N)`` config) trains
``--steps`` steps in a plain loop (a topology update at step 5 for SMET):

* ``measured``: ``smet.zero.measure_static`` after the last backward (what the engine holds, by tensor);
* ``predicted``: ``predict_static(..., engine="zero", shards=1)``;
* ``alloc_after_step``: ``torch.cuda.memory_allocated()`` after the last step, minus what was allocated before the
  model (the gradients are freed by then, so compare with measured - grads), and the step's peak;
* the mean forward / backward / step times of steps 3..N (``torch.cuda.synchronize`` around each; with
  ``--profile``, step N-1 is profiled instead of timed).

    python scripts/gpu_zero_memory.py --model 130m --out $OUT/zero_memory.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time


def _live(device: str):
    import torch

    for obj in gc.get_objects():
        try:
            if isinstance(obj, torch.Tensor) and obj.device.type == device and not obj.is_meta:
                yield obj, obj.untyped_storage()
        except Exception:
            continue


def _unattributed(model, zopt, opt, device: str, before: set, top: int = 8) -> list:
    """Live tensors on ``device`` (found by the garbage collector) whose storage is not one that
    ``smet.zero.measure_static`` counts and that were not alive before the case (``before``), by (shape,
    dtype), largest first: what else the process holds."""
    import torch

    counted = set()
    for t in [*model.parameters(), *model.buffers(), *[q for g in opt.param_groups for q in g["params"]],
              *[v for st in opt.state.values() for v in st.values() if isinstance(v, torch.Tensor)],
              *[t for ts in (getattr(zopt, "averaged_gradients", None) or {}).values() for t in ts or []]]:
        counted.add(t.untyped_storage().data_ptr())
    seen, rows = set(before), {}
    for obj, st in _live(device):
        ptr = st.data_ptr()
        if ptr in counted or ptr in seen or st.nbytes() == 0:
            continue
        seen.add(ptr)
        key = f"{tuple(obj.shape)} {obj.dtype}"
        n, b = rows.get(key, (0, 0))
        rows[key] = (n + 1, b + st.nbytes())
    return sorted(([k, n, b] for k, (n, b) in rows.items()), key=lambda r: -r[2])[:top]


def case(stage: int, method: str, args) -> dict:
    import deepspeed
    import torch
    from lightning.pytorch.strategies import DeepSpeedStrategy

    from smet import zero
    from smet.build import build_training
    from smet.compose import compose
    from smet.models.llama import model_shapes
    from smet.sparse.memory import predict_static

    cfg = compose([f"model={args.model}", f"sparsity={method}", "trainer.precision=bf16-mixed",
                   f"data.seq_len={args.seq}", f"trainer.max_steps={args.steps + 1}",
                   *(["sparsity.update_interval=5"] if method != "dense" else [])])
    cuda = args.device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated() if cuda else 0
    before = {st.data_ptr() for _, st in _live(args.device)}
    tr = build_training(cfg, None, vocab_size=args.vocab, defer=True)
    tr.materialize(args.device)
    ctrl = tr.controller
    opt = tr.build_optimizer(per_layer_groups=ctrl is not None)
    ds = DeepSpeedStrategy(stage=stage).config
    ds.update(train_micro_batch_size_per_gpu=args.batch, gradient_accumulation_steps=1, gradient_clipping=0.0,
              bf16={"enabled": True}, steps_per_print=10**9)
    engine, zopt, _, _ = deepspeed.initialize(model=tr.model, optimizer=opt, config=ds)
    if ctrl is not None:
        zero.bind(zopt, opt)
    times = {"forward": [], "backward": [], "step": []}
    measured = None
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for s in range(1, args.steps + 1):
        if ctrl is not None:
            ctrl.before_step(s)
        x = torch.randint(0, args.vocab, (args.batch, args.seq + 1), device=args.device,
                          generator=torch.Generator(args.device).manual_seed(s))
        sync()
        t0 = time.perf_counter()
        logits = engine(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, args.vocab), x[:, 1:].reshape(-1))
        sync()
        t1 = time.perf_counter()
        engine.backward(loss)
        sync()
        t2 = time.perf_counter()
        if s == args.steps:
            del logits
            measured = zero.measure_static(tr.model, zopt, ctrl)
        if args.profile and s == args.steps - 1:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                engine.step()
                sync()
            with open(f"{args.profile}_zero{stage}_{method}.txt", "w") as f:
                f.write(prof.key_averages().table(sort_by="cpu_time_total", row_limit=40, max_name_column_width=70))
        else:
            engine.step()
        if ctrl is not None:
            ctrl.after_step(s)
        sync()
        t3 = time.perf_counter()
        if s >= 3 and not (args.profile and s == args.steps - 1):  # the profiled step is not timed
            for k, v in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
                times[k].append(v)
    alloc = torch.cuda.memory_allocated() - base if cuda else 0
    unattributed = _unattributed(tr.model, zopt, opt, args.device, before)
    peak = torch.cuda.max_memory_allocated() - base if cuda else 0
    shapes = model_shapes(cfg["model"], args.vocab, args.seq)
    pred = predict_static(shapes, cfg["sparsity"], cfg["optimizer"], "bf16-mixed", total_steps=args.steps + 1,
                          engine="zero")
    out = {"stage": stage, "method": method, "measured": measured, "predicted": pred,
           "alloc_after_step": alloc, "measured_minus_grads": measured["all"]["total"] - measured["all"]["grads"],
           "peak": peak, "loss": float(loss), "live_tensors_not_in_measured": unattributed, "groups": len(opt.param_groups),
           "ms": {k: round(1000 * sum(v) / len(v), 2) for k, v in times.items()}}
    del engine, zopt, opt, tr, ctrl, loss
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="130m")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--out", default="zero_memory.json")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: a dry run (DS_ACCELERATOR=cpu)")
    p.add_argument("--profile", default="", help="path prefix: torch.profiler table of one optimizer step per case")
    args = p.parse_args()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29511"), RANK="0",
                      WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    import deepspeed
    import torch

    if args.device == "cuda":
        torch.cuda.set_device(0)
    deepspeed.init_distributed(dist_backend="nccl" if args.device == "cuda" else "gloo")
    rows = []
    for stage in (1, 2):
        for method in ("smet", "dense"):
            r = case(stage, method, args)
            rows.append(r)
            m, pr = r["measured"]["all"], r["predicted"]["all"]
            diff = {k: m[k] - pr[k] for k in m if m[k] != pr[k]}
            print(f"ZeRO-{stage} {method}: measured {m['total']:,} B, predicted {pr['total']:,} B, "
                  f"{'equal' if not diff else 'differ ' + str(diff)}; allocated after the step "
                  f"{r['alloc_after_step']:,} B vs measured - grads {r['measured_minus_grads']:,} B; "
                  f"peak {r['peak'] / 2**30:.2f} GiB; {r['groups']} param groups; ms {r['ms']}; other live "
                  f"tensors {r['live_tensors_not_in_measured'][:4]}",
                  flush=True)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
