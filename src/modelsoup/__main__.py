"""``python -m modelsoup``: the command line."""

from .cli.main import run

run()
