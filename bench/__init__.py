"""Benchmarks against the published GeoCLIP implementation, side by side: ``python -m bench [--quick]``.

One module per benchmark (``bench_eval``, ``bench_location_encoder``, ``bench_train_step``,
``bench_memory``), each with ``main(quick=False) -> common.Result``; shared helpers in
``common``. Figures are written to ``bench/RESULTS.md``.
"""
