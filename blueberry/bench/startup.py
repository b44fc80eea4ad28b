"""How much a command's `--help` costs: the modules it imports and the CPU time it takes, in a fresh process.

    python -m blueberry.bench.startup                        # every console script of this checkout
    python -m blueberry.bench.startup --root ../old-checkout --commands generate   # another checkout's

CPU time (user + system of the child process) rather than wall time, so a busy machine changes the figure
little; the median of `--repeats` runs. `--root` puts another checkout first on the import path, which is how
a before/after comparison runs both side by side.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys

COMMANDS = ("train", "data", "scale", "generate", "eval", "export", "board")
PROBE = """
import os, sys
from blueberry.cli.{command} import main
out, sys.stdout = sys.stdout, open(os.devnull, "w")
main(["--help"])
sys.stdout = out
print(len(sys.modules), sum(m.startswith("blueberry.models.") for m in sys.modules), "torch" in sys.modules)
"""


def measure(command: str, root: str | None, repeats: int) -> tuple[float, int, int, bool]:
    """(median CPU seconds, modules, model-kind modules, whether torch was imported) of `command --help`."""
    env = {**os.environ, **({"PYTHONPATH": root} if root else {})}
    times, last = [], ""
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        last = subprocess.run([sys.executable, "-c", PROBE.format(command=command)], env=env, check=True,
                              capture_output=True, text=True).stdout
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        times.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    modules, kinds, torch = last.split()
    return statistics.median(times), int(modules), int(kinds), torch == "True"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="a checkout to measure instead of the installed one")
    parser.add_argument("--commands", nargs="+", default=list(COMMANDS), choices=COMMANDS)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    print("| command | CPU s (median) | modules | model-kind modules | torch |")
    print("| --- | --- | --- | --- | --- |")
    for command in args.commands:
        cpu, modules, kinds, torch = measure(command, args.root, args.repeats)
        print(f"| blueberry-{command} --help | {cpu:.2f} | {modules} | {kinds} | {'yes' if torch else 'no'} |")


if __name__ == "__main__":
    main()
