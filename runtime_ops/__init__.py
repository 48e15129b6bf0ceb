"""Native kernels for SEFP linear layers, and an independent numpy reference of the format.

Installed as ``otaro_export.runtime_ops``. See ``runtime_ops/README.md`` for the
packed plane layout the kernels read.
"""
