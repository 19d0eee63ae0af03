"""aspd_cli: the `aspd` command, the top floor of the house.

One module per subcommand (generate, demo, run, serve, data/train/calibrate, bench), `common.py` for
what they share (the model and sampling flags, the one way to load the engine, the user-error type
of bad flags) and `main.py` for the parser, the dispatch and the one error handler. Nothing below
imports from here (tests/test_layering.py).
"""
