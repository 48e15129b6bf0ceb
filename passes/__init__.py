"""Graph passes on torch.export programs (installed as ``otaro_export.passes``). One pass per file.

Entry point for both exporters: :func:`lower_to_sefp`.
"""

from otaro_export.passes.freeze_sefp_weights import SEFPLayerSpec, paper_encoder
from otaro_export.passes.lowering import LoweringReport, lower_to_sefp

__all__ = ["lower_to_sefp", "LoweringReport", "SEFPLayerSpec", "paper_encoder"]
