"""python -m minitinybert.distill: the distillation command (cli.py)."""
import sys

from ..training.world import run_main
from .cli import main

sys.exit(run_main(main))
