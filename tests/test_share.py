"""Ray: token data shared through the object store costs one copy per node however many trials read it,
and tokenising with Ray Data writes the same shards as the local pool."""

import numpy as np
import pytest

from blueberry.data.format import Manifest, ShardInfo, SplitInfo, TokenizerInfo, write_shard
from blueberry.data.tokens import TokenShards
from pipelines.prepare import PrepareConfig, prepare
from pipelines.share import share

pytestmark = pytest.mark.ray

ROW = 257


@pytest.fixture(scope="module")
def big_dataset(tmp_path_factory):
    """48 MB of random tokens in three shards."""
    out = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(0)
    files = []
    for i in range(3):
        rows = rng.integers(0, 8192, size=(31_000, ROW), dtype=np.uint16)
        name = f"train-{i:05d}.arrow"
        files.append(ShardInfo(name, len(rows), len(rows) * (ROW - 1), write_shard(out / name, rows)))
    Manifest(TokenizerInfo("synthetic", 8192, "0" * 64, 0), seq_len=ROW - 1, dtype="uint16",
             splits={"train": SplitInfo(tuple(files)), "val": SplitInfo()}).write(out)
    return TokenShards.open(out)


def test_shared_handle_reads_the_same_tokens(ray_local, big_dataset):
    handle = share(big_dataset)
    shared = handle.open()
    for a, b in zip(big_dataset.rows["train"].arrays, shared.rows["train"].arrays):
        assert np.array_equal(a, b) and not b.flags.writeable  # a read-only view onto the object store
    assert bool((big_dataset.train_stream(8, 1).next() == shared.train_stream(8, 1).next()).all())


def test_eight_concurrent_trials_hold_one_copy(ray_local, big_dataset):
    ray = ray_local

    @ray.remote(num_cpus=0.25)
    class Trial:
        def read(self, handle, copy):
            import psutil

            process = psutil.Process()
            before = process.memory_full_info().uss
            data = handle.open()
            arrays = [np.array(a) if copy else a for a in data.rows["train"].arrays]
            checksum = sum(int(a.sum(dtype=np.uint64)) for a in arrays)  # touches every page
            return process.memory_full_info().uss - before, checksum

    handle = share(big_dataset)
    expected = sum(int(a.sum(dtype=np.uint64)) for a in big_dataset.rows["train"].arrays)
    trials = [Trial.remote() for _ in range(8)]
    results = ray.get([t.read.remote(handle, False) for t in trials])
    assert all(checksum == expected for _, checksum in results)
    # Pages of the object store are shared memory: reading them adds nothing unique to a trial.
    assert all(extra < 0.1 * handle.nbytes for extra, _ in results), [e / 1e6 for e, _ in results]
    # The same measurement does see a private copy when a trial makes one, so it can fail.
    copied, _ = ray.get(trials[0].read.remote(handle, True))
    assert copied > 0.9 * handle.nbytes
    for t in trials:
        ray.kill(t)


def test_ray_data_tokenisation_matches_the_local_pool(ray_local, tmp_path):
    config = PrepareConfig(seq_len=64, shard_tokens=64 * 400, max_documents=300)
    prepare(config, tmp_path / "local", workers=2, backend="local", progress=False)
    prepare(config, tmp_path / "ray", workers=2, backend="ray", progress=False)
    local = {p.name: p.read_bytes() for p in (tmp_path / "local").glob("*.arrow")}
    assert local and local == {p.name: p.read_bytes() for p in (tmp_path / "ray").glob("*.arrow")}
