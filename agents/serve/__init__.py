"""Serving step-level routing: an OpenAI-compatible server, a Python controller and cost calibration.

- :mod:`agents.serve.loop` — the live step loop as an asynchronous generator of written steps,
  with bounded, timed and cancellable upstream calls;
- :mod:`agents.serve.routers` — served routers and their operating points (Thr threshold, POMDP λ);
- :mod:`agents.serve.service` — OpenAI request checking, the routing run and the response/chunk format;
- :mod:`agents.serve.app` — the FastAPI application (``trim-serve``, :mod:`agents.cli.serve`);
- :mod:`agents.serve.controller` — :class:`~agents.serve.controller.Controller`, the same without a server;
- :mod:`agents.serve.calibrate` — ``trim-calibrate`` (:mod:`agents.cli.calibrate`): an operating point for a target cost.

FastAPI and uvicorn (the ``serve`` extra) are imported only by :mod:`agents.serve.app` and the CLI.
"""
