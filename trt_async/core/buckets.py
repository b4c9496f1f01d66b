"""The bucket grid now lives in the backend base layer, :mod:`trt_async.backends.shapes`.

This alias module remains only for the benchmark scripts outside the package that still
import it from here; it goes when they move into the package.
"""

from trt_async.backends.shapes import Bucket, BucketGrid

__all__ = ["Bucket", "BucketGrid"]
