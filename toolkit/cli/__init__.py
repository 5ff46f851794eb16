"""The ``toolkit`` command line: one file per subcommand, each exposing ``register(subparsers)``."""
