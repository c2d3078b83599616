"""MixamoRP-style benchmark: builder (default body, glTF skins), pose selection, runner, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import trimesh
from lora_checkpoint import write_lora_checkpoint

from drpose.eval import benchmark
from drpose.eval.__main__ import main
from drpose.eval.assets import load_gltf_asset
from drpose.motion.sequence import PoseSequence


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    benchmark.build_benchmark(out, config=benchmark.BuildConfig(count=3, resolution=64))
    return out


def test_default_build_writes_cases(bench):
    manifest = benchmark.load_manifest(bench)
    assert manifest["version"] == benchmark.MANIFEST_VERSION
    assert len(manifest["cases"]) == 3
    rows = [c["pose"]["row"] for c in manifest["cases"]]
    assert len(set(rows)) == 3
    for entry in manifest["cases"]:
        case = benchmark.load_case(bench, entry)
        assert case.image.shape == (3, 64, 64) and case.mask.shape == (1, 64, 64)
        assert 0.05 < case.mask.mean() < 0.9
        # the image is white exactly where the mask is empty
        assert torch.all(case.image[:, case.mask[0] == 0] == 1)
        assert len(case.gt.faces) == 20908 and case.joints.shape == (22, 3)
        # the stored normalisation puts the mesh in the front view's box (longer side 740/768)
        box = case.normalization.apply(torch.from_numpy(np.asarray(case.gt.vertices))[None])[0]
        extent = (box.amax(0) - box.amin(0))[:2].max()
        assert extent == pytest.approx(740 / 768, rel=1e-5)


def test_hard_poses_are_distinct_and_start_far_from_rest():
    rng = np.random.default_rng(0)
    body = rng.normal(scale=0.4, size=(5, 63)).astype(np.float32)
    body[0] = 0  # the rest pose
    rows = np.concatenate([body, body, body])  # every pose three times
    seq = PoseSequence(global_orient=np.zeros((15, 3)), body_pose=rows, transl=np.zeros((15, 3)),
                       betas=np.zeros((15, 10)), fps=30.0, source="test")
    picks = benchmark.select_hard_poses(seq, 5)
    assert sorted(picks % 5) == [0, 1, 2, 3, 4]  # five different poses, no duplicate chosen
    from drpose.motion.select import pose_features

    features = pose_features(seq)
    distance_to_rest = np.linalg.norm(features - features[0], axis=1)
    assert distance_to_rest[picks[0]] == distance_to_rest.max()


def test_hard_fraction_keeps_the_rest_pose_out():
    rng = np.random.default_rng(0)
    body = rng.normal(scale=0.4, size=(5, 63)).astype(np.float32)
    body[0] = 0  # the rest pose
    rows = np.concatenate([body, body, body])
    seq = PoseSequence(global_orient=np.zeros((15, 3)), body_pose=rows, transl=np.zeros((15, 3)),
                       betas=np.zeros((15, 10)), fps=30.0, source="test")
    from drpose.motion.select import pose_features

    hardness = np.linalg.norm(pose_features(seq) - pose_features(seq)[0], axis=1)
    picks = benchmark.select_hard_poses(seq, 3, hard_fraction=0.5)  # 8 of the 15 rows
    assert len(set(picks % 5)) == 3 and 0 not in picks % 5
    assert hardness[picks].min() >= np.median(hardness)
    assert 0 in benchmark.select_hard_poses(seq, 5, hard_fraction=1.0) % 5
    with pytest.raises(ValueError, match="hard_fraction"):
        benchmark.select_hard_poses(seq, 9, hard_fraction=0.5)
    with pytest.raises(ValueError, match="hard_fraction"):
        benchmark.select_hard_poses(seq, 1, hard_fraction=0.0)


def write_two_bone_cylinder(path, *, segments=12, rings=9):
    """A unit-length cylinder along -y (radius 0.1) skinned to a hip bone (y = 0) and a knee bone
    (y = -0.5), named like Mixamo's left leg, under a Hips root; written with pygltflib."""
    import pygltflib as g

    angles = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    ys = np.linspace(0, -1, rings)
    vertices = np.array([(0.1 * np.cos(a), y, 0.1 * np.sin(a)) for y in ys for a in angles],
                        np.float32)
    faces = []
    for r in range(rings - 1):
        for s in range(segments):
            a, b = r * segments + s, r * segments + (s + 1) % segments
            faces += [(a, b + segments, b), (a, a + segments, b + segments)]
    faces = np.array(faces, np.uint32)
    lower = vertices[:, 1] < -0.5 + 1e-6
    joints = np.zeros((len(vertices), 4), np.uint16)
    joints[:, 0] = np.where(lower, 2, 1)
    weights = np.zeros((len(vertices), 4), np.float32)
    weights[:, 0] = 1
    inverse_bind = np.stack([np.eye(4), np.eye(4), np.eye(4)]).astype(np.float32)
    inverse_bind[2, 1, 3] = 0.5  # the knee sits at y = -0.5
    chunks = [vertices.tobytes(), faces.tobytes(), joints.tobytes(), weights.tobytes(),
              inverse_bind.transpose(0, 2, 1).tobytes()]
    offsets = np.cumsum([0] + [len(c) for c in chunks])
    views = [g.BufferView(buffer=0, byteOffset=int(o), byteLength=len(c))
             for o, c in zip(offsets, chunks, strict=False)]
    accessors = [
        g.Accessor(bufferView=0, componentType=g.FLOAT, count=len(vertices), type=g.VEC3,
                   min=vertices.min(0).tolist(), max=vertices.max(0).tolist()),
        g.Accessor(bufferView=1, componentType=g.UNSIGNED_INT, count=faces.size, type=g.SCALAR),
        g.Accessor(bufferView=2, componentType=g.UNSIGNED_SHORT, count=len(vertices), type=g.VEC4),
        g.Accessor(bufferView=3, componentType=g.FLOAT, count=len(vertices), type=g.VEC4),
        g.Accessor(bufferView=4, componentType=g.FLOAT, count=3, type=g.MAT4),
    ]
    primitive = g.Primitive(attributes=g.Attributes(POSITION=0, JOINTS_0=2, WEIGHTS_0=3),
                            indices=1)
    gltf = g.GLTF2(
        scene=0, scenes=[g.Scene(nodes=[0, 3])],
        nodes=[g.Node(name="mixamorig:Hips", children=[1]),
               g.Node(name="mixamorig:LeftUpLeg", children=[2]),
               g.Node(name="mixamorig:LeftLeg", translation=[0, -0.5, 0]),
               g.Node(name="leg", mesh=0, skin=0)],
        meshes=[g.Mesh(primitives=[primitive])], skins=[g.Skin(joints=[0, 1, 2],
                                                               inverseBindMatrices=4)],
        accessors=accessors, bufferViews=views,
        buffers=[g.Buffer(byteLength=int(offsets[-1]))])
    gltf.set_binary_blob(b"".join(chunks))
    gltf.save(str(path))
    return vertices, lower


def test_gltf_two_bone_cylinder_bends_at_the_knee(tmp_path):
    vertices, lower = write_two_bone_cylinder(tmp_path / "leg.glb")
    asset = load_gltf_asset(tmp_path / "leg.glb")
    np.testing.assert_allclose(asset.vertices, vertices, atol=1e-6)
    assert asset.joint_names == ("mixamorig:Hips", "mixamorig:LeftUpLeg", "mixamorig:LeftLeg")
    body_pose = np.zeros(63)
    body_pose[9:12] = (np.pi / 2, 0, 0)  # SMPL-X joint 4 = left_knee, 90 degrees about x
    posed, joints = asset.pose(np.zeros(3), body_pose)
    np.testing.assert_allclose(posed[~lower], vertices[~lower], atol=1e-12)  # thigh stays
    knee = np.array([0, -0.5, 0])
    expected = (vertices[lower] - knee) @ np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]]).T + knee
    np.testing.assert_allclose(posed[lower], expected, atol=1e-6)
    assert posed[lower][:, 2].min() == pytest.approx(-0.5, abs=1e-6)  # the shin points to -z
    np.testing.assert_allclose(joints[4], knee, atol=1e-7)
    assert np.isnan(joints[5]).all()  # no right knee in the asset
    # a hip rotation carries the knee and the whole shin along
    body_pose[:3] = (0, 0, np.pi / 2)  # left_hip 90 degrees about z
    posed, joints = asset.pose(np.zeros(3), body_pose)
    np.testing.assert_allclose(joints[4], (0.5, 0, 0), atol=1e-7)


def test_build_from_gltf_assets(tmp_path):
    write_two_bone_cylinder(tmp_path / "leg.glb")
    manifest = benchmark.build_benchmark(
        tmp_path / "bench", assets=[tmp_path], config=benchmark.BuildConfig(count=2,
                                                                             resolution=32))
    assert [c["asset"] for c in manifest["cases"]] == ["leg", "leg"]
    case = benchmark.load_case(tmp_path / "bench", manifest["cases"][0])
    assert len(case.gt.vertices) == 12 * 9 and case.mask.sum() > 0


@pytest.fixture
def fakes(monkeypatch):
    """Fake reconstructors that see the case being run (load_case is wrapped to record it)."""
    cases = {}
    original = benchmark.load_case

    def recording(bench, entry):
        cases["current"] = case = original(bench, entry)
        return case

    monkeypatch.setattr(benchmark, "load_case", recording)

    def make(offset):
        def run(image, mask):
            case = cases["current"]
            box = case.normalization.apply(
                torch.from_numpy(np.asarray(case.gt.vertices))[None])[0]
            joints = case.normalization.apply(torch.from_numpy(case.joints)[None])[0].numpy()
            shifted = box.numpy() + np.array([offset, 0.0, 0.0])
            mesh = trimesh.Trimesh(shifted, case.gt.faces, process=False)
            return benchmark.Reconstruction(mesh=mesh, joints=joints)
        return run
    return make


RUN = benchmark.RunConfig(align="none", n_points=2000, normal_size=32, worst=2)


def test_runner_scores_tables_and_resume(bench, tmp_path, fakes):
    out = tmp_path / "results"
    rows = benchmark.run_benchmark(bench, {"perfect": fakes(0.0), "shifted": fakes(0.05)}, out,
                                   config=RUN)
    assert len(rows) == 6
    perfect = [r for r in rows if r["model"] == "perfect"]
    shifted = [r for r in rows if r["model"] == "shifted"]
    for p, s in zip(perfect, shifted, strict=True):
        assert p["chamfer_cm"] < 0.5 < s["chamfer_cm"]
        assert p["normal_error"] < s["normal_error"]
        assert p["pa_mpjpe_mm"] == pytest.approx(0, abs=1e-6)
        assert np.isnan(p["psnr"])  # no views from the fake
    lines = (out / "results.csv").read_text().splitlines()
    assert lines[0].split(",")[:3] == ["model", "case", "chamfer_cm"]
    assert len(lines) == 1 + 6 + 2
    table = (out / "results.md").read_text()
    assert "| perfect |" in table and "| shifted |" in table and "Chamfer (cm)" in table
    assert "`none`" in table
    assert (out / "worst_cases.png").is_file()

    def fail(image, mask):
        raise AssertionError("finished cases must not run again")

    kept = benchmark.run_benchmark(bench, {"perfect": fail, "shifted": fail}, out, config=RUN)
    assert json.dumps(kept, sort_keys=True) == json.dumps(rows, sort_keys=True)  # NaN-aware
    (out / "cases" / "shifted" / "case_001.json").unlink()  # an unfinished case runs again
    again = benchmark.run_benchmark(bench, {"perfect": fail, "shifted": fakes(0.05)}, out,
                                    config=RUN)
    assert json.dumps(again, sort_keys=True) == json.dumps(rows, sort_keys=True)


def test_a_failing_case_is_recorded_and_the_run_goes_on(bench, tmp_path, fakes):
    good, calls = fakes(0.0), []

    def flaky(image, mask):
        calls.append(1)
        if len(calls) == 2:
            raise ValueError("reconstruct: no usable view")
        return good(image, mask)

    out = tmp_path / "results"
    with pytest.warns(UserWarning, match="flaky failed on case_001: ValueError"):
        rows = benchmark.run_benchmark(bench, {"flaky": flaky}, out, config=RUN)
    assert [("error" in r) for r in rows] == [False, True, False]
    assert rows[1]["error"] == "ValueError: reconstruct: no usable view"
    assert all(np.isnan(rows[1][k]) for k, _ in benchmark.METRIC_COLUMNS)
    assert rows[0]["chamfer_cm"] < 0.5 and rows[2]["chamfer_cm"] < 0.5
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0].endswith(",align,error") and "no usable view" in csv_lines[2]
    assert csv_lines[-1].endswith("1 failed")
    mean = float(csv_lines[-1].split(",")[2])
    assert mean == pytest.approx((rows[0]["chamfer_cm"] + rows[2]["chamfer_cm"]) / 2)
    table = (out / "results.md").read_text()
    assert "| flaky |" in table and table.splitlines()[6].endswith("| 1 |")
    assert (out / "worst_cases.png").is_file()  # the failed case is drawn with a grey tile
    assert not (out / "cases" / "flaky" / "case_001.ply").exists()
    calls.clear()
    benchmark.run_benchmark(bench, {"flaky": flaky}, out, config=RUN)
    assert not calls  # a recorded failure is a finished case


def test_cli_runs_tiny_pipelines_end_to_end(bench, tmp_path, capsys):
    """The real path (generate with the tiny pipeline, carve, score) for a base model and the
    same model with a LoRA checkpoint as drpose.train writes it."""
    write_lora_checkpoint(tmp_path / "lora", seed=0)
    out = tmp_path / "results"
    code = main(["run", "--bench", str(bench), "--out", str(out), "--model", "base=tiny",
                 "--model", f"ft=tiny+{tmp_path / 'lora'}", "--steps", "2", "--points", "2000",
                 "--normal-size", "32", "--fit-iterations", "5", "--carve-iterations", "4",
                 "--recon-resolution", "48"])
    assert code == 0
    rows = {(p.parent.name, p.stem): json.loads(p.read_text())
            for p in (out / "cases").glob("*/*.json")}
    assert len(rows) == 6
    for row in rows.values():
        assert "error" not in row
        assert all(np.isfinite(row[k]) for k, _ in benchmark.METRIC_COLUMNS), row
        assert 0 < row["chamfer_cm"] < 100  # a body-sized mesh where the body is
    assert any(rows["base", c]["psnr"] != rows["ft", c]["psnr"]
               for c in ("case_000", "case_001", "case_002"))  # the adapters were loaded
    assert "| base |" in capsys.readouterr().out
    assert (out / "worst_cases.png").is_file()


def test_model_spec_parse():
    assert benchmark.ModelSpec.parse("tiny") == benchmark.ModelSpec("tiny", "tiny")
    assert benchmark.ModelSpec.parse("ours=/m/base+/m/lora") == benchmark.ModelSpec(
        "ours", "/m/base", "/m/lora")


def test_cli_exit_codes(tmp_path, capsys):
    assert main(["build", "--out", str(tmp_path / "b"), "--count", "2", "--resolution",
                 "32"]) == 0
    assert (tmp_path / "b" / "manifest.json").is_file()
    assert main(["run", "--bench", str(tmp_path / "missing"), "--model", "tiny"]) == 2
    assert "manifest.json" in capsys.readouterr().err
    assert main(["build", "--out", str(tmp_path / "c"), "--count", "0"]) == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--model", "tiny"])  # --bench missing: argparse
    assert exit_info.value.code == 2
