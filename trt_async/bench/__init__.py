"""The load harness behind ``trt-async bench`` (the ``bench`` extra).

* ``corpus`` and ``workload``: seeded request streams (texts shipped in ``corpus/``);
* ``loadgen``: closed- and open-loop load from one aiohttp session;
* ``report`` and ``plots``: summaries, Markdown, JSON and PNG plots;
* ``server``: starting our server for a run, reading any server's model statistics;
* ``bare``: the same model run directly on its backend, what the server is measured against;
* ``plan``, ``cli`` and ``run``: the phase plans, the subcommand and the run itself.

Only ``plan``, ``cli``, ``workload`` and ``corpus`` import without the extra; nothing in the
server imports this package.
"""
