"""DrPose15K on disk: build from the packaged motion, validate, corrupt, interrupt and resume,
split with --shard i/n, read back with DrPoseDataset."""

import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from drpose.body import StandInModelWarning
from drpose.data import DrPoseDataset
from drpose.data import dataset as fmt
from drpose.data.__main__ import main
from drpose.data.build import BuildConfig, DatasetBuilder, parse_shard, write_npz
from drpose.data.stream import as_float_images
from drpose.data.synth import RenderSynthesizer
from drpose.motion.load import default_pose_sequences
from drpose.motion.sequence import concatenate
from drpose.train.reward import drpose15k_data, window_split

SIDE = 64
SETTINGS = dict(anchors=4, neighbours=1, windows_per_shard=2)  # 2 shards x 2 windows x 2 frames
CLI_SETTINGS = ["--motion", "default", "--anchors", "4", "--neighbours", "1",
                "--windows-per-shard", "2", "--resolution", str(SIDE), "--no-progress"]


@pytest.fixture(scope="module")
def synth():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StandInModelWarning)
        return RenderSynthesizer(SIDE)


def config(out):
    return BuildConfig(motions=("default",), out=out, **SETTINGS)


def tree(root):
    """{relative path: bytes} of every file under root."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def built(synth, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "ds"
    result = DatasetBuilder(config(out), synth).build(progress=False)
    assert result.built == [0, 1] and result.complete
    return out


def test_build_validates_and_has_the_documented_layout(built):
    report = fmt.validate(built)
    assert report.ok, report.problems
    assert (report.shards, report.samples) == (2, 8)
    spec = fmt.read_format(built)
    assert spec["format_version"] == fmt.FORMAT_VERSION and spec["num_samples"] == 8
    assert sorted(p.name for p in (built / "shards").iterdir()) == ["shard-00000", "shard-00001"]
    with Image.open(built / "shards" / "shard-00001" / "00000007.png") as im:
        assert im.mode == "RGBA" and im.size == (SIDE, SIDE)
    with Image.open(built / "contact_sheet.png") as sheet:
        assert sheet.size[0] > 0
    assert main(["validate", str(built)]) == 0


def test_dataset_reads_samples_with_their_poses(built):
    data = DrPoseDataset(built)
    assert len(data) == 8
    poses, clip_ids = concatenate(default_pose_sequences())
    windows = np.load(built / "plan.npz")["windows"]
    rows = windows.reshape(-1)
    for item in (0, 5, 7):
        sample = data[item]
        assert sample["image"].shape == (3, SIDE, SIDE) and sample["mask"].shape == (1, SIDE, SIDE)
        row = rows[item]
        assert torch.equal(sample["smplx"]["body_pose"], torch.from_numpy(poses.body_pose[row]))
        assert sample["meta"]["frame"] == poses.frame_ids[row]
        assert sample["meta"]["clip"] == default_pose_sequences()[clip_ids[row]].source
        assert sample["joints"].shape == (55, 3) and sample["keypoints"].shape == (17, 2)
        assert sample["meta"]["sample"] == item and sample["meta"]["window"] == item // 2
        assert sample["palette"].shape == (5, 3)
        # the image's alpha is the body mask; off the body the image is white
        off = sample["mask"][0] == 0
        assert 0 < off.float().mean() < 1 and torch.all(sample["image"][:, off] == 1)
    anchors = [data[i]["meta"]["anchor"] for i in range(8)]
    assert sum(anchors) == 4
    batch = next(iter(torch.utils.data.DataLoader(data, batch_size=4)))
    assert batch["image"].shape == (4, 3, SIDE, SIDE) and len(batch["meta"]["clip"]) == 4


@pytest.fixture
def copy(built, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(built, target)
    return target


def test_validate_names_a_truncated_image(copy, capsys):
    image = copy / "shards" / "shard-00001" / "00000006.png"
    image.write_bytes(image.read_bytes()[:100])
    assert main(["validate", str(copy)]) == 1
    assert str(image) in capsys.readouterr().out


def test_validate_names_an_altered_image_even_when_it_decodes(copy):
    image = copy / "shards" / "shard-00000" / "00000002.png"
    with Image.open(image) as im:
        flipped = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    flipped.save(image)
    problems = fmt.validate(copy).problems
    assert any(str(image) in p for p in problems)


def _truncate(path):
    path.write_bytes(path.read_bytes()[:200])


def _flip_a_bit(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _flip_a_bit])
@pytest.mark.parametrize("hashes", [True, False])
def test_validate_reports_a_damaged_index_and_keeps_earlier_problems(copy, capsys, damage,
                                                                     hashes):
    image = copy / "shards" / "shard-00000" / "00000002.png"
    image.write_bytes(image.read_bytes()[:100])
    index_path = copy / "shards" / "shard-00001" / fmt.INDEX_FILE
    damage(index_path)
    args = ["validate", str(copy)] + ([] if hashes else ["--no-hashes"])
    assert main(args) == 1
    out = capsys.readouterr().out
    assert str(index_path) in out and str(image) in out


def test_dataset_reader_names_a_damaged_index(copy):
    index_path = copy / "shards" / "shard-00001" / fmt.INDEX_FILE
    _truncate(index_path)
    with pytest.raises(ValueError, match=str(index_path)):
        DrPoseDataset(copy)


def test_validate_finds_non_finite_poses(copy):
    index_path = copy / "shards" / "shard-00000" / fmt.INDEX_FILE
    index = fmt.read_index(index_path)
    index["body_pose"][1, 4] = np.nan
    write_npz(index_path, index)
    problems = fmt.validate(copy, check_hashes=False).problems
    assert any("body_pose not finite in rows [1]" in p for p in problems)


def test_validate_finds_missing_shards_and_versions(copy, capsys):
    shutil.rmtree(copy / "shards" / "shard-00001")
    assert main(["validate", str(copy)]) == 1
    out = capsys.readouterr().out
    assert "1 of 2 shards missing: shard-00001" in out
    spec = (copy / fmt.FORMAT_FILE).read_text().replace('"format_version": 1',
                                                          '"format_version": 99')
    (copy / fmt.FORMAT_FILE).write_text(spec)
    assert any("format_version 99" in p for p in fmt.validate(copy).problems)
    with pytest.raises(ValueError, match="format_version 99"):
        DrPoseDataset(copy)


class Interrupted(Exception):
    pass


class FailingAfter:
    """A synthesizer that raises on its ``calls``-th call (as a crash or Ctrl-C would)."""

    def __init__(self, synth, calls):
        self.synth, self.calls = synth, calls
        self.name, self.resolution = synth.name, synth.resolution

    def describe(self):
        return self.synth.describe()

    def __call__(self, *args, **kwargs):
        self.calls -= 1
        if self.calls == 0:
            raise Interrupted
        return self.synth(*args, **kwargs)


def test_interrupted_build_resumes_without_touching_finished_shards(synth, built, tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(Interrupted):  # windows 0, 1 (shard 0) done, window 2 done, 3 fails
        DatasetBuilder(config(out), FailingAfter(synth, 4)).build(progress=False)
    assert fmt.completed_shards(out) == [0]
    leftovers = list((out / "shards").glob(fmt.TMP_PREFIX + "*"))
    assert len(leftovers) == 1 and len(list(leftovers[0].glob("*.png"))) == 2
    report = fmt.validate(out)
    assert not report.ok and any("shard-00001" in p for p in report.problems)
    finished = {p: (p.stat().st_mtime_ns, p.read_bytes())
                for p in (out / "shards" / "shard-00000").iterdir()}
    with pytest.raises(ValueError, match="not built yet"):
        DrPoseDataset(out)
    assert len(DrPoseDataset(out, allow_incomplete=True)) == 4

    result = DatasetBuilder(config(out), synth).build(progress=False)
    assert (result.skipped, result.built, result.complete) == ([0], [1], True)
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in finished} == finished
    assert tree(out) == tree(built)  # equal to the uninterrupted build, byte for byte


def test_shards_split_across_processes_equal_one_build(built, tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(["build", *CLI_SETTINGS, "--out", str(out), "--shard", "1/2"]) == 0
    assert fmt.completed_shards(out) == [1]
    assert "incomplete" in capsys.readouterr().out
    assert not (out / "contact_sheet.png").exists()
    assert main(["build", *CLI_SETTINGS, "--out", str(out), "--shard", "0/2"]) == 0
    assert fmt.completed_shards(out) == [0, 1]
    assert tree(out) == tree(built)


def test_resume_with_other_settings_is_refused(synth, built, tmp_path):
    out = tmp_path / "ds"
    shutil.copytree(built, out)
    other = BuildConfig(motions=("default",), out=out, anchors=4, neighbours=1,
                        windows_per_shard=2, seed=5)
    with pytest.raises(ValueError, match="seed"):
        DatasetBuilder(other, synth).build(progress=False)


@pytest.mark.parametrize("text", ["2/2", "1", "a/b", "-1/3"])
def test_parse_shard_rejects(text):
    with pytest.raises(ValueError, match="i/n"):
        parse_shard(text)


def test_parse_shard():
    assert parse_shard("3/8") == (3, 8)


def test_rerun_on_a_complete_dataset_writes_nothing(synth, copy):
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in copy.rglob("*") if p.is_file()}
    result = DatasetBuilder(config(copy), synth).build(progress=False)
    assert (result.built, result.skipped, result.complete) == ([], [0, 1], True)
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in before} == before
    assert {p for p in copy.rglob("*") if p.is_file()} == set(before)


def test_window_split_holds_out_whole_windows_anchors_first():
    windows = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    anchors = torch.tensor([False, True, False] * 4)
    train, held = window_split(windows, anchors, held_out=2)
    assert set(windows[held].tolist()) == {1, 3} and set(windows[train].tolist()) == {0, 2}
    assert held.tolist()[:2] == [4, 10]  # the held-out windows' anchors first
    assert sorted(train.tolist() + held.tolist()) == list(range(12))
    with pytest.raises(ValueError, match="lower --held_out"):
        window_split(windows, anchors, held_out=5)


def test_reward_data_of_a_dataset_never_trains_on_a_held_out_window(built):
    dataset = DrPoseDataset(built)
    train, held = drpose15k_data(built, held_out=2, eval_samples=8)
    windows = [dataset[i]["meta"]["window"] for i in range(len(dataset))]
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    held_rows = [i for i, w in enumerate(windows) if w % 2 == 1]
    assert len(held) == len(held_rows) and len(train) == len(dataset) - len(held_rows)
    train_images = [as_float_images(train.image(i)) for i in range(len(train))]
    for i in range(len(held)):  # each held-out image is a held-out window's, none trains
        image = as_float_images(held.image(i))
        assert any(torch.equal(image, images[r]) for r in held_rows)
        assert not any(torch.equal(image, t) for t in train_images)
