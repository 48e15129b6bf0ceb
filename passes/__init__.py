"""Graph passes on torch.export programs (installed as ``otaro_export.passes``). One pass per file."""
