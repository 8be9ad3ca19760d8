"""Embedding in a child made by ``fork`` after the parent loaded the network, run in a subprocess of its own.

:func:`embed_in_forked_child` starts ``python -m bob.learn.pytorch.test.forked_worker``,
which sets torch's thread count (the library never does), builds an
extractor, embeds one recording, forks, and embeds the same recording in the
child. The child has a deadline of its own (``SIGALRM``) and the subprocess
one too, so a hang fails the test instead of stopping the suite.
"""
import json
import os
import signal
import subprocess
import sys
from typing import Optional, Tuple

import numpy

#: Seconds the child may take for its embedding, and the whole subprocess (which builds the runtime).
CHILD_DEADLINE, SUBPROCESS_DEADLINE = 120, 900


def embed_in_forked_child(
    model_file: str, backend: str, threads: int = 2, child_threads: Optional[int] = None
) -> Tuple[numpy.ndarray, numpy.ndarray]:
    """The parent's and the forked child's embeddings of one 3 s recording.

    Raises
    ------
    RuntimeError
        With the child's message, if the child raised ``RuntimeError``.
    AssertionError
        If the child did not finish within :data:`CHILD_DEADLINE` seconds or failed otherwise.
    """
    command = [sys.executable, "-m", __name__, str(model_file), backend, str(threads), str(child_threads or 0)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=SUBPROCESS_DEADLINE, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["runtime"] == backend, f"the extractor runs {result['runtime']}, not {backend}"
    if result.get("error"):
        raise RuntimeError(result["error"])
    assert "child" in result, f"the forked child did not finish: {result}"
    return numpy.array(result["parent"], dtype=numpy.float32), numpy.array(result["child"], dtype=numpy.float32)


def _child(extractor, audio, child_threads: int, pipe: int) -> None:
    """In the forked child: embed, write the result or the RuntimeError's message to ``pipe``, exit."""
    signal.alarm(CHILD_DEADLINE)  # the default action of SIGALRM ends the process
    try:
        if child_threads:
            import torch

            torch.set_num_threads(child_threads)
        try:
            message = {"child": extractor(audio).tolist()}
        except RuntimeError as exc:
            message = {"error": str(exc)}
        os.write(pipe, json.dumps(message).encode())
    finally:
        os._exit(0)


def main(model_file: str, backend: str, threads: int, child_threads: int) -> None:
    import torch

    from bob.learn.pytorch.preprocessor.audio import DltResNetExtractor

    torch.set_num_threads(threads)
    extractor = DltResNetExtractor(model_file, backend=backend)
    audio = (16000, (numpy.random.RandomState(3).randn(48000) * 3000).astype(numpy.int16))
    result = {"parent": extractor(audio).tolist(), "runtime": extractor.runtime}
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        _child(extractor, audio, child_threads, write)
    os.close(write)
    chunks = []
    while True:
        chunk = os.read(read, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    if chunks:
        result.update(json.loads(b"".join(chunks)))
    else:
        result["status"] = status  # killed by its deadline: it hung
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
