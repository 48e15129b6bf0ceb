"""Errors users see. Each says what went wrong and, where there is one, the fix."""


class OtaroError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidBitsError(OtaroError, ValueError):
    """A precision outside E5M3..E5M8 (bits 3..8) was asked for."""


class NonFiniteWeightError(OtaroError, ValueError):
    """A weight holds NaN or Inf; the message names the tensor."""


class UnsupportedModelError(OtaroError, ValueError):
    """The model's architecture is not one this project converts."""


class ModelLoadError(OtaroError, RuntimeError):
    """A model path or file could not be loaded."""


class ArtifactError(OtaroError, RuntimeError):
    """An exported artifact (or its manifest) is missing, corrupt or incompatible."""


class KernelLibraryError(OtaroError, RuntimeError):
    """A native kernel library could not be built, found or loaded."""


class InvalidInputError(OtaroError, ValueError):
    """A call's arguments are unusable (an empty or over-long prompt, a negative token budget...)."""


class IntegrityError(ArtifactError):
    """An artifact file differs from what its manifest recorded at export (damaged or replaced)."""


class NonFiniteOutputError(ArtifactError):
    """The model produced NaN or Inf logits: a damaged artifact or a broken kernel, never a valid answer."""


class OtaroWarning(UserWarning):
    """Something the user asked for was adjusted (e.g. ``max_new_tokens`` clamped to the context)."""
