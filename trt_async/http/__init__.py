"""The HTTP layer: one Litestar controller per API dialect over :mod:`trt_async.core`."""
