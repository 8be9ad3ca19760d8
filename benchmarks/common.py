"""What the benchmark scripts share: the machine's description, a timer and the ``--network`` option."""
import argparse
import platform
import time
from typing import Callable

from bob.learn.pytorch import pretrained


def cpu_model() -> str:
    """The processor's name from /proc/cpuinfo (Linux), else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timed(function: Callable[[], object]) -> float:
    """Seconds one call of ``function`` takes."""
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def registered_network(name: str) -> pretrained.PretrainedNetwork:
    """The registry's record of ``name`` (a name or an alias), for argparse."""
    try:
        return pretrained.get(name)
    except ValueError as exc:  # its message lists the registered names
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_network_option(parser: argparse.ArgumentParser) -> None:
    """``--network NAME``: a registered network, DltResNet-34 by default."""
    parser.add_argument(
        "--network",
        type=registered_network,
        default="dltresnet34",
        metavar="NAME",
        help=f"registered network ({', '.join(pretrained.names())}, or an alias)",
    )


def add_memory_options(parser: argparse.ArgumentParser) -> None:
    """The long-recording memory measurement's options, and the output's: ``--long-minutes``, ``--skip-memory``, ``--json``.

    ``--memory-child`` (hidden) marks the child process that measures the memory.
    """
    parser.add_argument("--long-minutes", type=float, default=60.0, help="length of the memory test recording")
    parser.add_argument("--skip-memory", action="store_true", help="skip the long-file memory measurement")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
