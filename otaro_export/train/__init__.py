"""OTARo tuning: one set of float weights that holds up at every SEFP precision E5M3..E5M8.

Modules (one concern each; docs/TUNING.md has the details):

* ``fake_quant``   - SEFP fake quantization of the export-selected linears, straight-through estimator
* ``bps``          - Bit-width Path Search (exploitation + exploration bit-width choice per step)
* ``bit_samplers`` - the sampler interface and the fixed / uniform baselines
* ``laa``          - Low-precision Asynchronous Accumulation (delayed low-bit updates)
* ``tune_data``    - text / JSONL / HF-datasets data and data-free self-distillation samples
* ``teacher``      - the FP teacher's log-probabilities (cached)
* ``losses``       - KL to teacher, next-token NLL, top-1 agreement
* ``tune_config``  - run settings and method presets (otaro, bps, uniform, qat, ptq)
* ``trainer``      - the loop, checkpoints and resume
* ``distributed``  - torchrun, DDP / FSDP2 wrapping, the collectives the loop needs
* ``memory``       - device memory per rank from parameter counts (``python -m otaro_export.train.memory``)
* ``checkpoint``   - atomic checkpoint files (DCP-sharded state), run-directory lock, ``load_tuned_weights`` for export
* ``evaluation``   - perplexity / KL / agreement per precision, table, JSON, PNG
"""
