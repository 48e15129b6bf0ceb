"""otaro-export: once-tuned LLMs in SEFP, one artifact for every precision E5M3..E5M8."""

__version__ = "0.1.0"
