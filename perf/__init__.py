"""Load harness and performance scripts for trt_async (``trt-async bench``)."""
