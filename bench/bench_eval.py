"""Wall time of the whole default MixamoRP-style benchmark on the CPU: build (6 cases, the
stand-in SMPL-X body in hard poses of the bundled clips, 768² front views) and run with the tiny
random-init pipeline (PSHuman's 40 DDIM steps) through drpose.recon at its default (CPU budget)
resolution and iteration counts, scored with 100K surface points and 512² normal images.

One round, no warm-up (it takes minutes: 513 s on the quiet 2-core development machine,
2026-11-25, about 85 s per case). Memory: the build and the carving run partly in numpy / pymeshlab,
which the shared tensor-memory counter cannot see, so no peak is reported (n/a, not a wrong 0).
"""

from __future__ import annotations

from drpose.eval import benchmark


def bench_default_benchmark_wall_time(measure, tmp_path_factory):
    def whole() -> None:
        root = tmp_path_factory.mktemp("mixamorp")
        benchmark.build_benchmark(root / "bench")
        config = benchmark.RunConfig()
        tiny = benchmark.ModelSpec("tiny", "tiny")
        benchmark.run_benchmark(root / "bench", {"tiny": benchmark.pipeline_reconstructor(
            tiny, config)}, root / "results", config=config)

    measure(whole, group="MixamoRP default benchmark (6 cases, tiny pipeline)",
            label="build + run", baseline=True, rounds=1, memory=False, warmup=False)
