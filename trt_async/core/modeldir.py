"""Model files now live in the backend base layer, :mod:`trt_async.backends.modelfiles`.

This alias module remains only for the benchmark scripts outside the package that still
import it from here; it goes when they move into the package.
"""

from trt_async.backends.modelfiles import ModelFiles

__all__ = ["ModelFiles"]
