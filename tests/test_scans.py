"""Scan source of g_skel: THuman2.1-layout folders (a fixture written here), fits, textures,
reposing, rendering, and the MakeHuman mesh of Debian's assimp-testmodels."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from drpose.body import POSESCORE_JOINTS, load_smplx
from drpose.data import scans
from drpose.data.multiview import camera_light

MAKEHUMAN = Path("/usr/share/assimp/models/Collada/human.zae")
LIGHTS = camera_light((-0.3, 0.5, 1.0))


@pytest.fixture(scope="module")
def model():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the stand-in SMPL-X model warns once
        return load_smplx()


def _two_colour_texture() -> Image.Image:
    """Left half red, right half blue (u < 0.5 red)."""
    image = np.zeros((8, 16, 3), dtype=np.uint8)
    image[:, :8] = (255, 0, 0)
    image[:, 8:] = (0, 0, 255)
    return Image.fromarray(image)


def write_scan(folder: Path, model, fit: scans.SmplxFit, u: float = 0.25,
               fit_format: str = "npz") -> Path:
    """A THuman2.1-layout subject: the fitted SMPL-X body as the scan (``NNNN/NNNN.obj`` + mtl +
    texture, every vertex at texture coordinate (u, 0.5)) and ``NNNN/smplx_param.<format>``."""
    import trimesh
    from trimesh.visual import TextureVisuals

    folder.mkdir(parents=True)
    body = scans.fitted_body(model, fit)
    vertices = fit.to_scan(body.vertices[0].detach()).numpy()
    uv = np.tile(np.array([[u, 0.5]]), (len(vertices), 1))
    mesh = trimesh.Trimesh(vertices, body.faces.numpy(), process=False,
                           visual=TextureVisuals(uv=uv, image=_two_colour_texture()))
    mesh.export(folder / f"{folder.name}.obj")
    values = fit.to_json()
    if fit_format == "npz":
        np.savez(folder / "smplx_param.npz", **{k: np.asarray(v) for k, v in values.items()})
    elif fit_format == "pkl":  # as THuman2.1 ships them: numpy arrays in a dict
        with open(folder / "smplx_param.pkl", "wb") as file:
            pickle.dump({k: np.asarray(v, dtype=np.float32)[None] for k, v in values.items()},
                        file)
    return folder


def random_fit(seed: int) -> scans.SmplxFit:
    rng = np.random.default_rng(seed)
    return scans.SmplxFit(
        betas=rng.normal(0, 0.5, 10).astype(np.float32),
        global_orient=np.array([0, rng.uniform(-1, 1), 0], dtype=np.float32),
        body_pose=rng.normal(0, 0.3, 63).astype(np.float32),
        transl=rng.normal(0, 0.1, 3).astype(np.float32), scale=float(rng.uniform(0.8, 1.2)),
        translation=rng.normal(0, 0.5, 3).astype(np.float32))


@pytest.fixture(scope="module")
def scan_folder(tmp_path_factory, model) -> Path:
    root = tmp_path_factory.mktemp("thuman")
    write_scan(root / "0000", model, random_fit(0))
    write_scan(root / "0001", model, random_fit(1), u=0.75, fit_format="pkl")
    return root


def test_subjects_fits_and_joints(scan_folder, model):
    subjects = scans.scan_subjects(scan_folder)
    assert [s.name for s in subjects] == ["0000", "0001"]
    assert subjects[1].fit.name == "smplx_param.pkl"
    for subject, seed in zip(subjects, (0, 1), strict=True):
        fit = scans.load_smplx_fit(subject.fit)
        expected = random_fit(seed)
        np.testing.assert_allclose(fit.body_pose, expected.body_pose, atol=1e-6)
        assert fit.scale == pytest.approx(expected.scale)
        joints = scans.posescore_joints(model, fit)
        body = scans.fitted_body(model, expected)
        truth = expected.to_scan(body.joints[0, list(POSESCORE_JOINTS.indices)].detach())
        torch.testing.assert_close(joints, truth)


def test_texture_colours_reach_the_render(scan_folder):
    """u = 0.25 samples the red half, u = 0.75 the blue half; shading only scales them."""
    for subject, channel in zip(scans.scan_subjects(scan_folder), (0, 2), strict=True):
        mesh = scans.load_textured_mesh(subject.mesh)
        views = scans.render_scan(mesh, 48, LIGHTS, ambient=0.35)
        body = views.masks.bool().expand_as(views.colours)
        assert views.masks.float().mean() > 0.03  # every view sees the body
        colour = views.colours.permute(1, 0, 2, 3)[:, body[:, 0]]  # (3, pixels)
        others = [c for c in range(3) if c != channel]
        assert colour[channel].min() > 0.3
        assert colour[others].max() < 1e-6
        assert torch.all(views.colours[~body] == 1) and torch.all(views.normals[~body] == 1)


def test_renders_place_the_joints_on_the_body(scan_folder, model):
    """The projected pelvis of the fit lands inside the silhouette in every view (both come
    from the same normalisation and cameras)."""
    from drpose.render import cameras

    subject = scans.scan_subjects(scan_folder)[0]
    mesh = scans.load_textured_mesh(subject.mesh)
    views = scans.render_scan(mesh, 64, LIGHTS, ambient=0.35)
    joints = scans.posescore_joints(model, scans.load_smplx_fit(subject.fit))
    keypoints, visible = cameras.project_joints(joints[None], None, (64, 64),
                                                normalization=views.normalization)
    x, y = keypoints[0, :, 0].round().long().unbind(-1)  # pelvis (joint 0) in each view
    assert visible[0, :, 0].all()
    assert views.masks[torch.arange(6), 0, y, x].all()


def test_errors_name_the_file(tmp_path, model, scan_folder):
    missing_fit = tmp_path / "nofit"
    write_scan(missing_fit / "0007", model, random_fit(2))
    (missing_fit / "0007" / "smplx_param.npz").unlink()
    with pytest.raises(scans.ScanError, match=r"0007\.obj: no SMPL-X fit.*smplx_param\.npz"):
        scans.scan_subjects(missing_fit)
    # the fit may live in a separate folder, as the THuman2.1 download ships it
    fits = tmp_path / "fits" / "0007"
    fits.mkdir(parents=True)
    (fits / "smplx_param.npz").write_bytes((scan_folder / "0000" / "smplx_param.npz").read_bytes())
    assert scans.scan_subjects(missing_fit, fits=tmp_path / "fits")[0].fit.parent == fits

    untextured = tmp_path / "plain" / "0003"
    untextured.mkdir(parents=True)
    import trimesh

    trimesh.creation.box().export(untextured / "0003.obj")
    with pytest.raises(scans.ScanError, match=r"0003\.obj: the mesh has no texture"):
        scans.load_textured_mesh(untextured / "0003.obj")
    with pytest.raises(scans.ScanError, match="no such mesh file"):
        scans.load_textured_mesh(tmp_path / "absent.obj")


def test_pickled_fits_build_arrays_only(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this would run on load",))

    path = tmp_path / "smplx_param.pkl"
    path.write_bytes(pickle.dumps({"betas": Payload()}))
    with pytest.raises(scans.ScanError, match=r"refused to build builtins\.print"):
        scans.load_smplx_fit(path)
    path.write_bytes(pickle.dumps({"betas": np.zeros(10)}))
    with pytest.raises(scans.ScanError, match="no 'global_orient'"):
        scans.load_smplx_fit(path)


def test_repose_of_the_fitted_body_is_the_posed_body(model):
    """A scan that IS the fitted body, reposed, equals the body posed directly (nearest
    vertices are the body's own, no pose blend shapes: agreement up to their size)."""
    fit = random_fit(3)
    body = scans.fitted_body(model, fit)
    mesh = scans.TexturedMesh.plain(fit.to_scan(body.vertices[0].detach()), body.faces,
                                    (0.5, 0.5, 0.5))
    pose = random_fit(4).body_pose
    moved, joints = scans.repose(model, mesh, fit, pose, fit.global_orient)
    direct = scans.fitted_body(model, fit, pose)
    truth = fit.to_scan(direct.vertices[0].detach())
    error = (moved.vertices - truth).norm(dim=-1)
    assert error.median() < 0.01 * fit.scale, error.median()  # pose blend shapes are absent
    torch.testing.assert_close(
        joints, fit.to_scan(direct.joints[0, list(POSESCORE_JOINTS.indices)].detach()))


@pytest.mark.skipif(not MAKEHUMAN.is_file(), reason="Debian's assimp-testmodels not installed "
                    "(make system-deps)")
def test_makehuman_mesh_fitted_and_posed(model):
    mesh = scans.load_textured_mesh(MAKEHUMAN)
    assert mesh.vertices.shape[0] > 10000
    skin = mesh.face_colours[~mesh.textured]
    torch.testing.assert_close(skin[0], torch.tensor([0.5903, 0.44, 0.338]))  # DefaultSkin
    assert mesh.textured.any()  # the eyes carry their texture
    fit, report = scans.fit_smplx_to_mesh(model, mesh, steps=120, samples=1500)
    assert report.mesh_to_body < 0.02 and report.body_to_mesh < 0.02, report
    pose = np.zeros(63, dtype=np.float32)
    pose[9] = 1.5  # left knee (body joint 4) bent
    posed, joints = scans.repose(model, mesh, fit, pose, fit.global_orient)
    knee, ankle = joints[4], joints[7]
    assert ankle[2] < knee[2] - 0.2  # the shin now points backwards
    views = scans.render_scan(posed, 48, LIGHTS, ambient=0.35)
    assert views.masks.float().mean() > 0.03


def test_scan_folder_renders_train_g_skel(tmp_path, model, tiny_vae):
    """Source (b) end to end: a THuman2.1-layout folder -> multi-view renders (the same folder
    format as the SMPL-X renders) -> the skel stage on a given VAE -> a loadable PoseScore."""
    from drpose.data.multiview import MultiViewRenders, RenderConfig, load_or_build
    from drpose.train import skel
    from tests.conftest import tiny_train

    root = tmp_path / "thuman"
    for i in range(6):
        write_scan(root / f"{i:04d}", model, random_fit(10 + i), u=0.25 + 0.1 * i)
    config = RenderConfig(resolution=32, held_out=3, scans=str(root))
    data = load_or_build(tmp_path / "renders", config)
    assert len(data) == 6 and len(data.subset("eval")) == 2
    assert MultiViewRenders.load(tmp_path / "renders").config == config
    expected = scans.posescore_joints(model, scans.load_smplx_fit(root / "0004" /
                                                                   "smplx_param.npz"))
    torch.testing.assert_close(data.joints[4], expected)
    run = skel.SkelConfig(train=tiny_train("skel", tmp_path, 20, lr=2e-3),
                          renders=str(tmp_path / "renders"), vae=str(tiny_vae), batch_size=2)
    out = skel.run(run)
    metrics = __import__("json").loads((out.parent / "metrics.json").read_text())
    for key in ("psnr", "ssim", "pck", "pair_accuracy"):
        assert np.isfinite(metrics[key]), key
    assert skel.load_posescore(out).sigma == run.sigma


@pytest.mark.skipif(not MAKEHUMAN.is_file(), reason="Debian's assimp-testmodels not installed "
                    "(make system-deps)")
def test_renders_command_poses_the_makehuman_mesh(tmp_path, capsys):
    from drpose.data.__main__ import main
    from drpose.data.multiview import MultiViewRenders

    out = tmp_path / "renders"
    args = ["renders", "--out", str(out), "--mesh", str(MAKEHUMAN), "--num-poses", "4",
            "--held-out", "2", "--resolution", "32", "--fit-steps", "100"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "fitted SMPL-X to" in printed and "4 samples at 32 px (2 held out)" in printed
    data = MultiViewRenders.load(out)
    assert data.normals.shape == (4, 6, 3, 32, 32)
    assert (data.joints[0] - data.joints[1]).norm(dim=-1).max() > 0.05  # two different poses
    assert main([*args[:-2], "--fit-steps", "50"]) == 2  # another config: refused, one line
    assert "holds renders made with another config" in capsys.readouterr().err
