"""Token shards: the format round-trips the token stream exactly, reads are deterministic and resumable,
and every kind of bad directory is refused with a clear error."""

import json
import shutil

import numpy as np
import pytest

from blueberry.core.config import replace
from blueberry.data.corpus import builtin_documents
from blueberry.data.format import MANIFEST_NAME, Manifest
from blueberry.data.tokenizer import load_tokenizer
from blueberry.data.tokens import TokenShards
from blueberry.errors import DataError, UserError
from blueberry.models.lm.config import tiny
from pipelines.prepare import PrepareConfig, is_validation_document, prepare


@pytest.fixture(scope="module")
def small_prep(tmp_path_factory):
    """40k tokens at seq_len 64, in shards of 16 rows, so there are many shards to cross."""
    out = tmp_path_factory.mktemp("prep") / "data"
    cfg = PrepareConfig(seq_len=64, max_tokens=40_000, shard_tokens=16 * 64, val_fraction=0.1)
    return cfg, out, prepare(cfg, out, progress=False)


def expected_stream(cfg, split):
    tokenizer = load_tokenizer("builtin")
    stream, total = [], 0
    for i, doc in enumerate(builtin_documents()):
        ids = tokenizer.encode_batch([doc])[0] + [tokenizer.eos_id]
        total += len(ids)
        if is_validation_document(i, cfg.seed, cfg.val_fraction) == (split == "val"):
            stream.extend(ids)
        if total >= cfg.max_tokens:
            return np.array(stream)


@pytest.mark.parametrize("split", ["train", "val"])
def test_shards_round_trip_the_token_stream(small_prep, split):
    cfg, out, manifest = small_prep
    data = TokenShards.open(out)
    assert len(manifest.splits[split].files) > 1
    rows = np.concatenate(data.rows[split].arrays)
    assert rows.shape[1] == cfg.seq_len + 1
    assert np.array_equal(rows[:-1, -1], rows[1:, 0])  # consecutive rows overlap by one token
    rebuilt = np.concatenate([rows[0]] + [r[1:] for r in rows[1:]])
    expected = expected_stream(cfg, split)
    assert len(expected) - len(rebuilt) < cfg.seq_len  # only the final partial row is dropped
    assert np.array_equal(rebuilt, expected[:len(rebuilt)])
    assert manifest.splits[split].tokens == len(rows) * cfg.seq_len


def test_documents_are_split_whole_and_deterministically():
    flags = [is_validation_document(i, 0, 0.1) for i in range(5000)]
    assert flags == [is_validation_document(i, 0, 0.1) for i in range(5000)]
    assert 0.08 < np.mean(flags) < 0.12
    assert flags != [is_validation_document(i, 1, 0.1) for i in range(5000)]


def test_prepare_is_idempotent_and_refuses_another_preparation(small_prep):
    cfg, out, manifest = small_prep
    before = (out / MANIFEST_NAME).stat().st_mtime_ns
    assert prepare(cfg, out, progress=False) == manifest
    assert (out / MANIFEST_NAME).stat().st_mtime_ns == before
    with pytest.raises(UserError, match="different preparation"):
        prepare(replace_prep(cfg, seq_len=32), out, progress=False)


def replace_prep(cfg, **changes):
    return PrepareConfig(**{**cfg.__dict__, **changes})


def test_prepare_refuses_a_foreign_non_empty_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        prepare(PrepareConfig(seq_len=64, max_tokens=1000), tmp_path, progress=False)
    assert not (tmp_path / MANIFEST_NAME).exists()


def test_unknown_source_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="unknown source"):
        prepare(PrepareConfig(source="ftp:corpus"), tmp_path / "x", progress=False)


def test_train_stream_is_seeded_and_resumable(builtin_data):
    a = builtin_data.train_stream(batch_size=8, seed=3)
    first = [a.next().clone() for _ in range(5)]
    b = builtin_data.train_stream(batch_size=8, seed=3)
    assert all(torch_equal(x, b.next()) for x in first)
    c = builtin_data.train_stream(batch_size=8, seed=3, position=3 * 8)
    assert torch_equal(c.next(), first[3])
    d = builtin_data.train_stream(batch_size=8, seed=4)
    assert not torch_equal(d.next(), first[0])


def test_train_stream_crosses_epochs_covering_every_row_once_per_epoch(small_prep):
    _, out, _ = small_prep
    data = TokenShards.open(out)
    n = len(data.rows["train"])
    stream = data.train_stream(batch_size=7, seed=0)
    seen = np.concatenate([stream._rows(0, n), stream._rows(n, n)])
    assert sorted(seen[:n]) == list(range(n)) and sorted(seen[n:]) == list(range(n))
    assert not np.array_equal(seen[:n], seen[n:])  # each epoch is shuffled anew


def torch_equal(a, b):
    return bool((a == b).all())


def test_missing_directory_and_unfinished_preparation(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        TokenShards.open(tmp_path / "nowhere")
    with pytest.raises(DataError, match="never finished"):
        TokenShards.open(tmp_path)


@pytest.fixture
def prepared_copy(small_prep, tmp_path):
    """A private copy of the prepared directory, for tests that damage it."""
    copy = tmp_path / "copy"
    shutil.copytree(small_prep[1], copy)
    return copy, small_prep[2]


def test_corrupt_shard_fails_its_checksum(prepared_copy):
    copy, manifest = prepared_copy
    shard = copy / manifest.splits["train"].files[1].name
    raw = bytearray(shard.read_bytes())
    raw[-200] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="fails its sha256 check"):
        TokenShards.open(copy)


def test_manifest_that_disagrees_with_the_shards(prepared_copy):
    copy, _ = prepared_copy
    raw = json.loads((copy / MANIFEST_NAME).read_text())
    raw["seq_len"] = 32
    for split in raw["splits"].values():
        for f in split["files"]:
            f["tokens"] = f["sequences"] * 32  # consistent in itself, so only the shards can tell
    (copy / MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(DataError, match="mixes preparations"):
        TokenShards.open(copy, verify=False)
    (copy / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(DataError, match="corrupt manifest .*: not JSON"):
        TokenShards.open(copy)


def test_data_must_fit_the_model(builtin_data):
    with pytest.raises(DataError, match="vocab_size is 1000"):
        builtin_data.check_fits(replace(tiny(), vocab_size=1000))
    with pytest.raises(DataError, match="--seq-len 512"):
        builtin_data.check_fits(replace(tiny(), seq_len=512))
    builtin_data.check_fits(replace(tiny(), vocab_size=49152))  # a larger vocabulary is fine


def test_manifest_json_round_trip(small_prep):
    manifest = small_prep[2]
    assert Manifest.from_json(manifest.to_json()) == manifest


def test_unigram_entropy_matches_a_direct_count(builtin_data):
    targets = np.concatenate([a[:, 1:].reshape(-1) for a in builtin_data.rows["train"].arrays])
    _, counts = np.unique(targets, return_counts=True)
    p = counts / counts.sum()
    assert builtin_data.unigram_entropy() == pytest.approx(float(-(p * np.log(p)).sum()), rel=1e-12)
