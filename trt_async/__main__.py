import sys

from trt_async.cli import main

sys.exit(main())
