"""Streamed (image, joints) pairs: uint8 storage, one read per item, loader batches that are
exactly the step's draws (any start, worker processes or not)."""

import pytest
import torch

from drpose.body.joints import POSESCORE_JOINTS
from drpose.data import DrPoseDataset, stream
from drpose.data.stream import DrPose15KPairs, StepBatches, TensorPairs, step_picks
from drpose.render import cameras
from tests.test_dataset import built, synth  # noqa: F401 (module fixtures: a built dataset)


def pairs(count=7, side=8):
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 3, side, side), dtype=torch.uint8, generator=gen)
    return TensorPairs(images, torch.randn(count, 23, 3, generator=gen))


def test_tensor_pairs_batch_uint8_as_float_in_unit_range():
    data = pairs()
    images, joints = data.batch(torch.tensor([4, 1]))
    assert images.dtype == torch.float32 and images.shape == (2, 3, 8, 8)
    torch.testing.assert_close(images, data.images[[4, 1]].float() / 255, rtol=0, atol=0)
    torch.testing.assert_close(joints, data.joints[[4, 1]])
    image, joint, index = data[6]
    assert image.dtype == torch.uint8 and index == 6 and torch.equal(joint, data.joints[6])
    with pytest.raises(IndexError, match="out of range"):
        data[7]
    with pytest.raises(ValueError, match=r"\(7, 3, R, R\)"):
        TensorPairs(data.images[:3], data.joints)


@pytest.mark.parametrize("workers", [0, 2])
def test_step_batches_load_exactly_the_steps_draws_from_any_start(workers):
    data = pairs()
    batches = StepBatches(data, 3, seed=5, rank=1, end=9, device=torch.device("cpu"),
                          workers=workers)
    for index in [2, 3, 4, 7, 8, 0]:  # a resumed start, consecutive steps, jumps
        _, picks = step_picks(5, index, 1, len(data), 3)
        images, joints = batches.get(index, picks)
        expected = data.batch(picks)
        assert torch.equal(images, expected[0]) and torch.equal(joints, expected[1])
    _, other = step_picks(6, 1, 1, len(data), 3)
    with pytest.raises(RuntimeError, match="the step drew"):
        batches.get(1, other)
    batches.close()


def test_step_picks_leave_the_generator_where_the_step_draws_its_noise():
    generator, picks = step_picks(3, 10, 0, 100, 2)
    from drpose.train.engine import step_generator

    again = step_generator(3, 10, 0)
    assert torch.equal(torch.randint(100, (2,), generator=again), picks)
    assert torch.equal(torch.rand(4, generator=generator), torch.rand(4, generator=again))


def test_drpose15k_pairs_hold_joints_and_read_one_image_per_item(built, monkeypatch):  # noqa: F811
    dataset = DrPoseDataset(built)
    reads = []
    original = stream.read_rgba

    def counted(path):
        reads.append(path)
        return original(path)

    monkeypatch.setattr(stream, "read_rgba", counted)
    rows = [5, 0, 3]
    data = DrPose15KPairs(dataset, rows)
    assert not reads and len(data) == 3  # nothing decoded up front
    images, joints = data.batch(torch.tensor([2, 0]))
    assert len(reads) == 2
    for got, row in zip(images, [3, 5], strict=True):
        assert torch.equal(got, dataset[row]["image"])
    item = dataset[3]
    normalization = cameras.BodyNormalization(center=item["camera"]["center"][None],
                                              scale=item["camera"]["scale"][None])
    expected = normalization.apply(item["joints"][list(POSESCORE_JOINTS.indices)][None])[0]
    torch.testing.assert_close(joints[0], expected)
    image, _, _ = data[1]
    assert image.dtype == torch.uint8 and image.shape == (3, 64, 64)


def test_a_missing_image_names_the_file(built, tmp_path):  # noqa: F811
    import shutil

    copy = tmp_path / "ds"
    shutil.copytree(built, copy)
    data = DrPose15KPairs(DrPoseDataset(copy), [1])
    path = copy / "shards" / data.files[0]
    path.unlink()
    with pytest.raises(ValueError, match=str(path.name)):
        data.batch(torch.tensor([0]))
