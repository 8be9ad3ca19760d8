"""``bob bio pipeline simple`` on a real dask cluster: a scheduler and two worker processes on 127.0.0.1.

The cluster is started with the standard ``dask scheduler`` / ``dask worker``
commands that doc/bob_integration.rst ("On a cluster") shows, and handed to
bob with a ``-l`` client file, as a user would. Every process is stopped when
the test ends, whatever happens (see ``local_cluster.py``).

Scores on the cluster must equal the ``--no-dask`` run's within 1e-6: the
two runs group the recordings into other batches, which moves embeddings by
float32 rounding (at most about 3e-7) and cosine scores by about 1e-7.

Hosts that do not share a folder are imitated with a mount namespace per
worker (``unshare --mount``, root only), in which an empty tmpfs covers the
model folder: such a worker sees no model file, or only the one it
downloaded itself.
"""
import re
import subprocess
from pathlib import Path

import numpy
import pytest

from .local_cluster import (
    LocalCluster,
    client_file_text,
    mount_namespace_available,
    on_another_host,
    scheduler_command,
    worker_command,
)
from .test_bob_integration import (  # noqa: F401 (fixtures)
    BOB,
    KEY_PREFIX,
    SPEAKERS,
    assert_scores,
    bob_config_set,
    checkpoint_times,
    expected_embeddings,
    expected_scores,
    read_scores,
    run,
    speech_database,
)

pytestmark = pytest.mark.slow

DOC = Path(__file__).resolve().parents[4] / "doc" / "bob_integration.rst"
#: Largest difference allowed between a score on the cluster and the same score without dask.
CLUSTER_SCORE_ATOL = 1e-6
#: Seconds a failing pipeline may take before it counts as hanging.
FAILURE_TIMEOUT = 300

needs_mount_namespace = pytest.mark.skipif(
    not mount_namespace_available(), reason="imitating separate hosts needs 'unshare --mount' (root)"
)


@pytest.fixture
def models(checkpoint, tmp_path):
    """A model folder named by the setting ``drn_modelpath`` (written with ``bob config set``)."""
    folder = tmp_path / "models"
    folder.mkdir()
    bob_config_set(KEY_PREFIX + "drn_modelpath", folder / "drn34.pth.tar", cwd=tmp_path)
    return folder


def pipeline_command(database: Path, output: Path, *options) -> list:
    """Absolute ``-o`` and ``-c``: workers resolve a relative path in their own folder."""
    return [BOB, "bio", "pipeline", "simple", "-p", "dltresnet34-voxceleb", "-d", database, "-o", output,
            "-c", output / "embeddings", "--write-column-scores", *options]


def no_dask_scores(database: Path, cwd: Path) -> dict:
    run(pipeline_command(database, cwd / "local", "--no-dask"), cwd=cwd)
    return read_scores(cwd / "local" / "scores-dev")


def assert_same_scores(scores: dict, reference: dict) -> None:
    assert set(scores) == set(reference), "the cluster must score every probe against every model"
    pairs = sorted(reference)
    numpy.testing.assert_allclose(
        [scores[p] for p in pairs], [reference[p] for p in pairs], rtol=0, atol=CLUSTER_SCORE_ATOL
    )


def executed_tasks(cluster: LocalCluster) -> dict:
    """Tasks each worker has run, by worker name (distributed's own count)."""
    import distributed

    with distributed.Client(cluster.address, timeout=30) as client:
        counts = client.run(lambda dask_worker: (dask_worker.name, dask_worker.state.executed_count))
    return dict(counts.values())


def scheduler_imported(cluster: LocalCluster, module: str) -> bool:
    """Whether the scheduler process has imported ``module`` (to unpickle the graphs it was sent)."""
    import distributed

    with distributed.Client(cluster.address, timeout=30) as client:
        return client.run_on_scheduler(lambda: __import__("sys").modules.get(module) is not None)


def test_two_workers_give_the_scores_of_no_dask(models, checkpoint, speech_database, tmp_path):
    """The shared-folder set-up: the setting names a folder that every worker sees."""
    (models / "drn34.pth.tar").write_bytes(checkpoint("drn34").read_bytes())
    database, _ = speech_database(enroll_per_speaker=2)
    reference = no_dask_scores(database, tmp_path)
    assert len(reference) == 6 * 5

    with LocalCluster(tmp_path / "dask", workers=2, nthreads=1) as cluster:
        run(pipeline_command(database, tmp_path / "cluster", "-l", cluster.client_file, "--dask-n-partitions", "4"),
            cwd=tmp_path)
        executed = executed_tasks(cluster)
        scheduler_has_torch = scheduler_imported(cluster, "torch")

    assert_same_scores(read_scores(tmp_path / "cluster" / "scores-dev"), reference)
    assert not scheduler_has_torch, "the scheduler unpickles the graph without importing PyTorch"
    assert len(checkpoint_times(tmp_path / "cluster" / "embeddings" / "samplewrapper")) == len(SPEAKERS)
    assert sorted(executed) == ["worker-1", "worker-2"]
    assert min(executed.values()) > 0, f"both workers must take part: {executed}"
    for name in ("scheduler", "worker-1", "worker-2"):
        assert "Traceback" not in cluster.log(name), cluster.log(name)[-3000:]


@needs_mount_namespace
def test_workers_that_downloaded_the_model_beforehand(models, server, speech_database, expected_embeddings, tmp_path):
    """No shared folder: each host runs ``bob pytorch download-models`` with the same settings first.

    The server holds the reference checkpoint of ``expected_embeddings``, so
    the scores are compared with the single-call ones (within the 5e-5 of
    test_bob_integration); the first test compares with ``--no-dask``.
    """
    bob_config_set(KEY_PREFIX + "drn_url", server.url("drn34.pth.tar"), cwd=tmp_path)
    run([BOB, "pytorch", "download-models", "drn34"], cwd=tmp_path)  # the host that runs bob
    database, protocol = speech_database(enroll_per_speaker=2)

    def each_host_downloads(command):
        return on_another_host(command, models, before=[str(BOB), "pytorch", "download-models", "drn34"])

    with LocalCluster(tmp_path / "dask", workers=2, wrap_worker=each_host_downloads) as cluster:
        assert server.served("ok") == 3, "each worker host downloads its own copy"
        run(pipeline_command(database, tmp_path / "cluster", "-l", cluster.client_file), cwd=tmp_path)

    assert_scores(tmp_path / "cluster" / "scores-dev", expected_scores(expected_embeddings("drn34"), protocol))


@needs_mount_namespace
def test_a_worker_without_the_model_file_fails_once_naming_the_setting(models, checkpoint, speech_database, tmp_path):
    """The model exists where bob runs but not on the worker hosts: one error, no hang."""
    (models / "drn34.pth.tar").write_bytes(checkpoint("drn34").read_bytes())
    database, _ = speech_database(enroll_per_speaker=2)

    with LocalCluster(
        tmp_path / "dask", workers=2, wrap_worker=lambda command: on_another_host(command, models)
    ) as cluster:
        result = subprocess.run(
            [str(part) for part in pipeline_command(database, tmp_path / "cluster", "-l", cluster.client_file)],
            cwd=tmp_path, capture_output=True, text=True, timeout=FAILURE_TIMEOUT,
        )

    assert result.returncode != 0
    message = (
        f"FileNotFoundError: model file {models / 'drn34.pth.tar'} does not exist on host "
        r"\S+\. A pipeline resolves its model file where it starts \(setting "
        f"{KEY_PREFIX}drn_modelpath or {KEY_PREFIX}rn_modelpath, else the package data folder\\) and every dask "
        "worker opens that same path: .*'bob config set "
        f"{KEY_PREFIX}drn_modelpath PATH'.*'bob pytorch download-models' on each host"
    )
    assert re.search(message, result.stderr), result.stderr[-3000:]
    assert result.stderr.count("does not exist on host") == 1, "one error, not one per task"
    assert not (tmp_path / "cluster" / "scores-dev").exists()


def test_the_documented_commands_are_those_the_tests_run():
    """doc/bob_integration.rst shows the cluster commands of local_cluster.py, with port 8786."""
    text = DOC.read_text()
    address = "tcp://127.0.0.1:8786"
    assert "$ " + " ".join(scheduler_command(8786)) in text
    assert "$ " + " ".join(worker_command(address, nthreads=1)) in text
    for line in client_file_text(address).strip().splitlines():
        assert line in text
    assert "bob bio pipeline simple -p dltresnet34-voxceleb -d my_database.py -l client.py" in text
    assert '-o "$PWD/results" -c "$PWD/results/embeddings"' in text  # absolute, as pipeline_command's
    assert 'DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON=\'{"OMP_NUM_THREADS": 2, "MKL_NUM_THREADS": 2}\'' in text
    benchmark = (DOC.parents[1] / "benchmarks" / "cluster.py").read_text()
    assert """"DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON": '{"OMP_NUM_THREADS": 2, "MKL_NUM_THREADS": 2}'""" in benchmark
