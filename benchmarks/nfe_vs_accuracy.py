"""The headline: does DIS at 18 forward passes match TRM at 336? Same data, same width, same wall-clock.

    python benchmarks/nfe_vs_accuracy.py --out runs/bench/nfe_vs_accuracy          # 9x9, 28-34 givens, 20 min each
    python benchmarks/nfe_vs_accuracy.py --task nqueens --preset long --out runs/bench/nqueens_long  # the paper's
    python benchmarks/nfe_vs_accuracy.py --quick --out runs/bench/quick            # a smoke run of a few minutes

Same as ``recursion-env bench nfe-vs-accuracy``; the logic lives in ``agents/experiments/bench.py``.
"""

import argparse
import sys

from agents.cli import add_bench_arguments, cmd_bench

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bench_arguments(parser)
    sys.exit(cmd_bench(parser.parse_args()))
