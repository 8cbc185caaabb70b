"""`python -m modelfusion` is the `fusion` command."""

from .cli import main

main()
