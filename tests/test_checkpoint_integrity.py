"""Damaged checkpoints are detected before they reach a run, and the run falls back to the one before.

The reference for every fallback is an uninterrupted run of the same config: a run that resumed
from the previous good checkpoint must end exactly as that run does.
"""

import logging
import os
import signal

import pytest
import torch
from interrupts import Interrupt, InterruptAt

from blueberry.core.checkpoint import (Checkpointer, StopOnSignal, checkpoint_path, checksum_path, load_weights,
                                       read_checkpoint, verify_checksum)
from blueberry.core.config import replace
from blueberry.core.hooks import Hook
from blueberry.core.loop import train
from blueberry.errors import DamagedFile
from blueberry.models.lm.task import LMTask


def flip_bytes(path, count=200, seed=0):
    """Flip `count` bytes in the middle half of `path`, as a failing disk or a bad copy would."""
    data = bytearray(path.read_bytes())
    generator = torch.Generator().manual_seed(seed)
    positions = torch.randint(len(data) // 4, 3 * len(data) // 4, (count,), generator=generator)
    for position in positions.tolist():
        data[position] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "flipped bytes": flip_bytes,
    "truncated": lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]),
    "empty": lambda path: path.write_bytes(b""),
    # A whole, readable file with the wrong structure, its checksum file rewritten to match: only the
    # structure check can catch it.
    "wrong structure": lambda path: (torch.save({"model": {}, "step": 8}, path),
                                     checksum_path(path).write_text(_sha256(path) + "  x\n")),
}


def _sha256(path):
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def uninterrupted(builtin_data, quick_train):
    """The reference every resumed run must end as: the same config, trained without a stop (the
    checkpoint cadence the tests set only observes a run)."""
    from blueberry.models.lm.config import tiny

    return train(LMTask(tiny()), quick_train, builtin_data)


@pytest.fixture
def interrupted(tiny_model, builtin_data, quick_train, tmp_path):
    """A run of 12 steps killed after step 11, with checkpoints at steps 4 and 8."""
    cfg = replace(quick_train, checkpoint_every=4)
    with pytest.raises(Interrupt):
        train(LMTask(tiny_model), cfg, builtin_data, [Checkpointer(tmp_path, every=4), InterruptAt(11)])
    assert sorted(p.name for p in tmp_path.glob("step-*.pt")) == ["step-00000004.pt", "step-00000008.pt"]
    return cfg, tmp_path


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_and_ends_as_an_uninterrupted_run(
        damage, interrupted, uninterrupted, tiny_model, builtin_data, caplog):
    cfg, directory = interrupted
    latest = checkpoint_path(directory, 8)
    damage(latest)
    with pytest.raises(DamagedFile):
        read_checkpoint(latest)

    checkpointer = Checkpointer(directory, every=4)
    with caplog.at_level(logging.WARNING):
        resumed = train(LMTask(tiny_model), cfg, builtin_data, [checkpointer])
    reference = uninterrupted

    assert checkpointer.resumed_from == checkpoint_path(directory, 4)
    assert checkpointer.set_aside == [directory / "step-00000008.pt.damaged"]
    assert "set aside as step-00000008.pt.damaged" in caplog.text
    assert (resumed.steps, resumed.train_loss, resumed.val.loss) == (reference.steps, reference.train_loss,
                                                                     reference.val.loss)
    # The damaged file is kept for inspection but never counted among the checkpoints again: rotation
    # keeps the two newest good ones (before: it could delete the good one and keep the damaged).
    assert sorted(p.name for p in directory.glob("step-*.pt")) == ["step-00000008.pt", "step-00000012.pt"]
    verify_checksum(checkpoint_path(directory, 12))


def test_when_every_checkpoint_is_damaged_the_run_stops_with_one_line_then_starts_over(
        interrupted, tiny_model, builtin_data):
    cfg, directory = interrupted
    for step in (4, 8):
        flip_bytes(checkpoint_path(directory, step))
    with pytest.raises(DamagedFile, match=r"^every checkpoint in .* is damaged \(set aside as \*\.damaged\): run the "
                                          r"same command again to start this run over from step 0$"):
        train(LMTask(tiny_model), cfg, builtin_data, [Checkpointer(directory, every=4)])
    again = Checkpointer(directory, every=4)
    result = train(LMTask(tiny_model), cfg, builtin_data, [again])
    assert again.resumed_from is None and result.steps == 12


def test_a_checkpoint_without_a_checksum_file_still_loads(interrupted, tiny_model, builtin_data):
    # Written before checksums, or by a process killed between writing the checkpoint and its checksum.
    cfg, directory = interrupted
    checksum_path(checkpoint_path(directory, 8)).unlink()
    checkpointer = Checkpointer(directory, every=4)
    train(LMTask(tiny_model), cfg, builtin_data, [checkpointer])
    assert checkpointer.resumed_from == checkpoint_path(directory, 8)


def test_the_checksum_is_the_files_sha256_in_sha256sum_format(interrupted):
    _, directory = interrupted
    path = checkpoint_path(directory, 8)
    assert checksum_path(path).read_text() == f"{_sha256(path)}  step-00000008.pt\n"


def test_inference_loading_refuses_a_damaged_checkpoint(interrupted):
    _, directory = interrupted
    flip_bytes(checkpoint_path(directory, 8))
    with pytest.raises(DamagedFile, match="does not match its checksum"):
        load_weights(directory)


class Explode(Hook):
    """Makes the loss blow up after `step`, as a learning rate far too high would."""

    def __init__(self, step):
        self.step = step

    def on_step(self, info, state):
        if info.step == self.step:
            with torch.no_grad():
                for p in state.model.parameters():
                    p.mul_(1e4)


def test_a_diverged_run_leaves_its_last_good_checkpoint_as_the_latest(tiny_model, builtin_data, quick_train,
                                                                      tmp_path):
    cfg = replace(quick_train, checkpoint_every=4)
    result = train(LMTask(tiny_model), cfg, builtin_data, [Checkpointer(tmp_path, every=4), Explode(9)])
    assert result.diverged and result.steps < 12
    # Before: the diverged state was saved at the end, and every rerun resumed into it.
    assert sorted(p.name for p in tmp_path.glob("step-*.pt")) == ["step-00000004.pt", "step-00000008.pt"]


class SignalAt(Hook):
    """Sends this process `signum` after step `step`, as Ctrl-C or a scheduler's SIGTERM would mid-run."""

    def __init__(self, step, signum):
        self.step, self.signum = step, signum

    def on_step(self, info, state):
        if info.step == self.step:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_the_step_under_way_and_the_rerun_ends_as_an_uninterrupted_run(
        signum, tiny_model, builtin_data, quick_train, uninterrupted, tmp_path):
    cfg = replace(quick_train, checkpoint_every=0)  # no periodic checkpoints: only the signal's
    checkpointer = Checkpointer(tmp_path, every=0)
    previous = signal.getsignal(signum)
    with pytest.raises(KeyboardInterrupt):
        train(LMTask(tiny_model), cfg, builtin_data, [checkpointer, SignalAt(7, signum), StopOnSignal(checkpointer)])
    assert signal.getsignal(signum) is previous  # handlers restored
    assert [p.name for p in tmp_path.glob("step-*.pt")] == ["step-00000007.pt"]
    resumed = Checkpointer(tmp_path)
    result = train(LMTask(tiny_model), cfg, builtin_data, [resumed])
    reference = uninterrupted
    assert resumed.resumed_from.name == "step-00000007.pt"
    assert (result.train_loss, result.val.loss) == (reference.train_loss, reference.val.loss)


def test_a_time_cadence_saves_when_the_interval_has_passed(tiny_model, builtin_data, quick_train, tmp_path):
    never = Checkpointer(tmp_path / "never", every=1, every_s=3600)
    train(LMTask(tiny_model), quick_train, builtin_data, [never])
    assert [p.name for p in (tmp_path / "never").glob("step-*.pt")] == ["step-00000012.pt"]  # the end only
    always = Checkpointer(tmp_path / "always", every=1, every_s=0, keep=100)
    train(LMTask(tiny_model), quick_train, builtin_data, [always])
    assert len(list((tmp_path / "always").glob("step-*.pt"))) == 12
