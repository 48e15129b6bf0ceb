"""End-to-end benchmark of the default model: same as ``otaro bench`` (this script only forwards to it).

    python benchmarks/bench_e2e.py --quick          # a few minutes on cached exports
    python benchmarks/bench_e2e.py -o bench-results # the full run recorded in docs/BENCHMARKS.md

Speed (decode/prefill tokens/s, medians), memory (artifact size, bytes per SEFP
weight, peak RSS per precision in fresh processes, resident SEFP weights of
the mmapped .pte), precision-switching cost and accuracy per precision, against
the fp32 ONNX/ExecuTorch exports and llama.cpp on the shipped Q4_1 GGUF.
Logic: ``otaro_export/bench/``.
"""

import sys

from otaro_export.cli.main import main

if __name__ == "__main__":
    sys.argv = [sys.argv[0], "bench", *sys.argv[1:]]
    main()
