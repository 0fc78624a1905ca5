"""One module per ``elaria`` subcommand, each with ``configure(parser)`` and ``main(args)``."""
