"""The thin `modelsoup` command: `main` parses and runs one command; shared options are
declared once in `options`; each command is one module."""

from .main import build_parser, main, run

__all__ = ["build_parser", "main", "run"]
