"""One module per `rsjax` subcommand. Each defines `register(subparsers)`, which adds its parser and
sets `run=<function(args) -> exit code>` as the parser default. Heavy imports stay inside `run`, so
`rsjax --help` is fast."""
