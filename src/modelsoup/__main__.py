"""``python -m modelsoup``: the command line."""

from .cli import run

run()
