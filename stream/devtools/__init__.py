"""The dev tools around the worker: an embedded broker, a producer, a tail, the demo, the CLI.

``hup-stream`` (`stream.devtools.hup_stream`) is their command line, ``python -m
stream.devtools.demo`` runs the demo (``make demo``) and ``python -m
stream.devtools.broker`` the embedded broker (the Procfile's ``broker``). The worker
(`stream`) never imports them.
"""
