"""``smet-bench``: training throughput and static memory of dense AdamW vs compact sparse methods.

Every point of a Hydra grid over ``conf/bench.yaml`` (``smet-bench model=130m sparsity=dense,smet
sparsity.density=0.5,0.25 trainer.precision=32,bf16-true``) runs in ONE process with the SAME
training loop (``smet.sparse.train_step``: forward, loss, backward, optimizer.step, zero_grad, and the
topology controller's before_step / after_step for sparse runs) on SYNTHETIC random tokens. Each
sparse run is compared with the dense run of the same model / data shape / precision / compile.
To keep ratios fair on a noisy shared machine the runs are interleaved: by default (CPU) all of
them are alive and take their steps in turn, rotating the order every step; with ``--interleave
round`` (default on CUDA) the timed steps are split into ``--rounds`` rounds interleaved across runs,
one model alive at a time. Step times are medians; the median of per-step paired ratios against
dense is reported as well. Static memory is measured with ``smet.sparse.memory.measure_static``
right after an optimizer step (grads present) and set next to ``smet.sparse.memory.predict_static``
(what ``smet-memory`` prints).

Models are built on the meta device and materialised on the target device (``smet.build``): the
dense weights of sparse layers are never allocated, so a LLaMA-13B at d = 0.25 fits one H200. A run
that runs out of memory (at build or any step) is recorded as OOM and the benchmark goes on with the
next one. MFU follows ``smet.perf`` (6 * N * tokens/s, N without the input embedding; ``mfu_dense``
with every weight counted, ``mfu_active`` with the active ones only).

Modules: :mod:`~smet.bench.grid` (points -> runs, dense references, labels), :mod:`~smet.bench.overrides`
(the old options as overrides, config errors as one line),
:mod:`~smet.bench.harness` (build + one step of a run), :mod:`~smet.bench.schedule` (the interleaved
scheduler ``run_bench``), :mod:`~smet.bench.oom`, :mod:`~smet.bench.profile`,
:mod:`~smet.bench.records` (record maths), :mod:`~smet.bench.render` (Markdown table, ratio lines,
``--from-json``), :mod:`~smet.bench.cli` (``smet-bench``).
"""
