"""The stages before the reward loop, end to end on tiny renders for a few steps."""

import json

import pytest
import torch
from diffusers import DDIMScheduler

from drpose.data.multiview import MultiViewRenders
from drpose.models.fingerprint import weights_fingerprint
from drpose.pipelines.multiview import MultiViewPipeline
from drpose.reward import PoseScore, latents_from_rows
from drpose.train import pretrain, skel
from drpose.train.engine import TrainConfig
from drpose.train.vae import load_vae
from tests.conftest import tiny_train


def test_vae_stage(tiny_vae):
    vae = load_vae(tiny_vae)
    assert not any(p.requires_grad for p in vae.parameters())
    assert vae.config.scaling_factor != 1.0
    metrics = json.loads((tiny_vae.parent / "metrics.json").read_text())
    assert metrics["eval_psnr"] > 10  # 30 steps: well above a blank image's PSNR
    latents = vae.encode(torch.rand(2, 3, 32, 32)).latent_dist.mode()
    assert latents.shape == (2, 4, 8, 8)  # factor 4


@pytest.mark.parametrize("prediction_type,ema", [("v_prediction", 0.9), ("epsilon", None)])
def test_pretrain_stage_writes_a_loadable_pipeline(tiny_renders, tiny_vae, prediction_type, ema):
    config = pretrain.PretrainConfig(
        train=TrainConfig(name=f"pretrain_{prediction_type}", runs_dir=str(tiny_renders.parent),
                          steps=2, progress=False, checkpoint_every=2),
        renders=str(tiny_renders), vae=str(tiny_vae), prediction_type=prediction_type,
        ema_decay=ema)
    folder = pretrain.run(config)
    assert (config.train.run_dir / "checkpoints" / "latest").is_file()
    metrics = json.loads((config.train.run_dir / "metrics.json").read_text())
    assert metrics["eval_mse"] > 0 and metrics["skipped_steps"] == 0
    pipe = MultiViewPipeline.from_pretrained(folder)
    assert pipe.views == 6 and not pipe.unet.config.face_view
    assert pipe.scheduler.config.prediction_type == prediction_type
    image = MultiViewRenders.load(tiny_renders).images(slice(0, 1))
    out = pipe(image, num_inference_steps=2, decode=False,
               generator=torch.Generator().manual_seed(0))
    assert out.normal_latents.shape == out.colour_latents.shape == (1, 6, 4, 8, 8)


def test_encoded_batch_uses_the_pipeline_row_layout(tiny_renders, tiny_vae):
    pipe = pretrain.tiny_pipeline(tiny_vae, "epsilon")
    data = MultiViewRenders.load(tiny_renders).subset("train")
    encoded = pretrain.encode_renders(pipe, data, chunk=3)
    cond, x0 = encoded.batch(torch.tensor([4, 1]), pipe.views)
    assert x0.shape == (2 * 2 * 6, 4, 8, 8) and cond.rows == 12
    normals, colours = data.views(torch.tensor([4, 1]))
    with torch.no_grad():
        expected_normals = pipe.encode_latents(normals.flatten(0, 1))
        expected_colours = pipe.encode_latents(colours.flatten(0, 1))
        expected_image = pipe.encode_latents(data.images(torch.tensor([4, 1])))
    torch.testing.assert_close(x0[:12], expected_normals, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(x0[12:], expected_colours, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cond.image_latents[:6], expected_image[:1].expand(6, -1, -1, -1),
                               atol=1e-5, rtol=1e-4)
    # the same rows make PoseScore's layout: object 0's view 2 = (normal, colour) of view 2
    layout = latents_from_rows(x0, pipe.views)
    torch.testing.assert_close(layout[0, 2], torch.cat([x0[2], x0[12 + 2]]))


def test_condition_dropout_drops_image_latents_and_labels_together(tiny_vae):
    pipe = pretrain.tiny_pipeline(tiny_vae, "epsilon")
    cond = pipe.encode_condition(torch.rand(2, 3, 32, 32))
    keep = torch.tensor([True] * 6 + [False] * 6)
    dropped = pretrain.drop_conditions(cond, keep)
    assert torch.equal(dropped.image_latents[:6], cond.image_latents[:6])
    assert torch.equal(dropped.class_labels[:6], cond.class_labels[:6])
    assert not dropped.image_latents[6:].any() and not dropped.class_labels[6:].any()
    assert torch.equal(dropped.prompt_embeds, cond.prompt_embeds)


def test_min_snr_weights():
    scheduler = DDIMScheduler(**pretrain.PSHUMAN_DDIM, prediction_type="epsilon")
    t = torch.tensor([0, 100, 500, 999])
    alpha = scheduler.alphas_cumprod[t]
    snr = alpha / (1 - alpha)
    weights = pretrain.snr_weights(scheduler, t, 5.0)
    torch.testing.assert_close(weights, torch.minimum(snr, torch.tensor(5.0)) / snr)
    assert weights[0] < 1 and weights[-1] == 1  # low noise down-weighted, high noise kept
    scheduler.register_to_config(prediction_type="v_prediction")
    torch.testing.assert_close(pretrain.snr_weights(scheduler, t, 5.0),
                               torch.minimum(snr, torch.tensor(5.0)) / (snr + 1))
    assert torch.equal(pretrain.snr_weights(scheduler, t, None), torch.ones(4))


def test_skel_stage_metrics_and_posescore(tiny_skel, tiny_renders):
    folder, metrics = tiny_skel
    for key in ("psnr", "ssim", "pck", "pair_accuracy", "keypoint_error_px"):
        assert key in metrics
    assert 0 <= metrics["ssim"] <= 1 and 0 <= metrics["pck"] <= 1
    reward = skel.load_posescore(folder)
    assert isinstance(reward, PoseScore) and reward.sigma == 1.5
    recorded = json.loads((folder / skel.POSESCORE_FILE).read_text())["vae_fingerprint"]
    assert recorded == weights_fingerprint(load_vae(tiny_renders.parent / "vae" / "vae"))
    data = MultiViewRenders.load(tiny_renders)
    latents = skel.view_latents(load_vae(tiny_renders.parent / "vae" / "vae"), data.subset("eval"))
    score = reward(latents[:2], data.subset("eval").joints[:2],
                   data.subset("eval").normalization(slice(0, 2)))
    assert score.shape == (2,) and torch.all(score < 0)


def test_true_views_score_is_g_skels_own_pose_score(tiny_skel, tiny_renders, tiny_vae):
    """posescore_true_views (metrics.json of the reward stage) scores the held-out renders
    exactly as the skel stage's held-out evaluation scores a latent with its own pose."""
    from drpose.train.reward import rendered_posescore

    folder, metrics = tiny_skel
    pipe = MultiViewPipeline.tiny(seed=0)
    pipe.vae = load_vae(tiny_vae)
    held = MultiViewRenders.load(tiny_renders).subset("eval")
    score = rendered_posescore(pipe, skel.load_posescore(folder), held, len(held))
    assert score == pytest.approx(metrics["posescore_own"], rel=1e-5)
    assert score > metrics["posescore_other"]  # g_skel tells the true pose from the others
    two = rendered_posescore(pipe, skel.load_posescore(folder), held, 2)
    assert two != pytest.approx(score, rel=1e-6)


def test_ensure_default_reuses_finished_stages(tmp_path, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    for stage in ("pipeline", "skel"):
        folder = tmp_path / ("pretrain" if stage == "pipeline" else "skel") / stage
        folder.mkdir(parents=True)
        (folder / pretrain.DONE_FILE).write_text("{}")
    monkeypatch.setattr(pretrain, "run", must_not_run)
    monkeypatch.setattr(skel, "run", must_not_run)
    assert pretrain.ensure_default(tmp_path) == tmp_path / "pretrain" / "pipeline"
    assert skel.ensure_default(tmp_path) == tmp_path / "skel" / "skel"


def test_pretrain_continues_from_a_pipeline_folder(tiny_renders, tiny_vae):
    def config(name, **options):
        return pretrain.PretrainConfig(
            train=TrainConfig(name=name, runs_dir=str(tiny_renders.parent), steps=1,
                              progress=False, checkpoint_every=1, lr=1e-2),
            renders=str(tiny_renders), vae=str(tiny_vae), **options)

    first = pretrain.run(config("pretrain_first", prediction_type="epsilon"))
    before = MultiViewPipeline.from_pretrained(first).unet.state_dict()
    second = pretrain.run(config("pretrain_second", init=str(first)))
    after = MultiViewPipeline.from_pretrained(second)
    assert after.scheduler.config.prediction_type == "epsilon"  # the checkpoint's, kept
    changed = [name for name, value in after.unet.state_dict().items()
               if not torch.equal(value, before[name])]
    # one AdamW step (lr 1e-2) from the first model's weights moves each weight by at most lr
    assert changed
    for name, value in after.unet.state_dict().items():
        assert (value - before[name]).abs().max() <= 1.01e-2, name
    assert torch.equal(after.vae.encoder.conv_in.weight,
                       MultiViewPipeline.from_pretrained(first).vae.encoder.conv_in.weight)


def test_skel_learns_from_a_pipeline_folders_vae_at_its_side(tiny_renders, tiny_vae, tmp_path):
    import shutil

    pipe = tmp_path / "pipe"
    shutil.copytree(tiny_vae, pipe / "vae")
    (pipe / "unet").mkdir()
    for sample_size, ok in ((8, True), (16, False)):  # the tiny VAE downsamples 32 px by 4
        (pipe / "unet" / "config.json").write_text(json.dumps({"sample_size": sample_size}))
        assert skel.pipeline_image_side(pipe) == 4 * sample_size
        config = skel.SkelConfig(train=tiny_train("skel_pipe", tmp_path, 2),
                                 renders=str(tiny_renders), vae="no/such/folder",
                                 pipeline=str(pipe))
        if ok:
            out = skel.run(config)
            assert (out / skel.POSESCORE_FILE).is_file()
        else:
            with pytest.raises(ValueError, match="--resolution 64"):
                skel.run(config)
    with pytest.raises(FileNotFoundError, match=r"unet/config\.json"):
        skel.pipeline_image_side(tmp_path / "not_a_pipeline")


def test_reward_run_reports_judges_against_the_true_views(tiny_renders, tiny_vae, tiny_skel,
                                                          tmp_path, monkeypatch, capsys):
    """The demo's metrics.json and printed line carry the judges next to the reward."""
    from drpose.train import reward as reward_stage

    pipeline = pretrain.run(pretrain.PretrainConfig(
        train=tiny_train("pretrain_demo", tmp_path, 2), renders=str(tiny_renders),
        vae=str(tiny_vae)))
    judged = []
    real_judge = reward_stage.default_view_judge

    def spy(pipe, held, judge):
        judged.append(judge)
        return real_judge(pipe, held, judge)

    monkeypatch.setattr(pretrain, "ensure_renders", lambda cache: tiny_renders)
    monkeypatch.setattr(pretrain, "ensure_default", lambda cache: pipeline)
    monkeypatch.setattr(skel, "ensure_default", lambda cache: tiny_skel[0])
    monkeypatch.setattr(skel, "ensure_judge", lambda cache: tiny_skel[0])
    monkeypatch.setattr(reward_stage, "default_view_judge", spy)
    config = reward_stage.RewardConfig(train=tiny_train("demo", tmp_path, 1), num_steps=4,
                                       early_stop=1, eval_samples=2, cache_dir=str(tmp_path),
                                       image_every=0)
    metrics = reward_stage.run(config)
    saved = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    for key in ("judge_posescore", "iou", "normal_error_deg", "psnr", "ssim"):
        for when in ("before", "after"):
            assert len(saved[f"{key}_{when}_each"]) == 2
            assert saved[f"{key}_{when}"] == pytest.approx(metrics[f"{key}_{when}"])
    assert 0 <= saved["iou_after"] <= 1 and 0 <= saved["normal_error_deg_after"] <= 180
    # the judge here is the reward's own g_skel, so its scores must agree with the reward's
    assert saved["judge_posescore_before_each"] == pytest.approx(saved["posescore_before_each"],
                                                                 rel=1e-5)
    assert saved["judge_posescore_true_views"] == pytest.approx(saved["posescore_true_views"])
    assert len(judged) == 1
    line = capsys.readouterr().out
    assert "judge PoseScore" in line and "silhouette IoU" in line


def test_reward_run_refuses_a_g_skel_of_another_vae_and_renders_of_another_side(
        tiny_renders, tiny_vae, tiny_skel, tmp_path, monkeypatch):
    """Checked before any training: the pipeline's VAE is not the one g_skel learned from; with
    g_skel's VAE, the tiny UNet (16 px latents) x the tiny VAE (factor 4) makes 64 px images,
    and the 32 px renders do not fit."""
    from drpose._cli import UsageError
    from drpose.train import reward as reward_stage

    monkeypatch.setattr(pretrain, "ensure_renders", lambda cache: tiny_renders)
    pipe = MultiViewPipeline.tiny(seed=3)
    pipe.save_pretrained(tmp_path / "pipe")
    config = reward_stage.RewardConfig(train=tiny_train("refused", tmp_path, 1),
                                       pipeline=str(tmp_path / "pipe"), skel=str(tiny_skel[0]),
                                       cache_dir=str(tmp_path))
    with pytest.raises(UsageError, match=r"learned from the latents of another VAE"):
        reward_stage.run(config)
    pipe.vae = load_vae(tiny_vae)
    pipe.save_pretrained(tmp_path / "pipe")
    with pytest.raises(UsageError, match=r"renders .*: 32 px images, but pipeline .* "
                                         r"generates 64 px"):
        reward_stage.run(config)
    assert not (tmp_path / "refused").exists()


@pytest.fixture
def empty_dir_with_tiny_chain(tmp_path, monkeypatch, tiny_vae):
    """An empty working directory; the default chain lives under ``tmp_path/chain`` and its
    renders are the tiny ones (built there when missing); its VAE is the tiny one."""
    import shutil

    from drpose.pipelines.default import DONE_FILE
    from drpose.train import vae as vae_stage
    from tests.conftest import TINY_RENDERS

    chain = tmp_path / "chain"
    monkeypatch.setattr(vae_stage, "default_chain_dir", lambda: chain)
    monkeypatch.setattr(pretrain, "default_chain_dir", lambda: chain)
    monkeypatch.setattr(vae_stage, "RenderConfig", lambda: TINY_RENDERS)
    shutil.copytree(tiny_vae, chain / "vae" / "vae")
    (chain / "vae" / "vae" / DONE_FILE).write_text("{}")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work, chain


def test_stages_run_alone_from_an_empty_directory_and_chain(empty_dir_with_tiny_chain, capsys,
                                                            monkeypatch):
    from drpose.train.__main__ import main

    work, chain = empty_dir_with_tiny_chain
    quiet = ["--train.steps", "1", "--train.progress", "false"]
    assert main(["vae", *quiet]) == 0  # builds the default renders it needs
    assert (chain / "renders").is_dir() and (work / "runs/vae/vae/config.json").is_file()
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("vae: held-out reconstruction PSNR") and "runs/vae/vae" in out[-1]

    def must_not_run(*args, **kwargs):
        raise AssertionError("pretrain/skel must use runs/vae/vae, not the chain's VAE")

    with monkeypatch.context() as patch:
        patch.setattr(pretrain, "ensure_vae", must_not_run)
        assert main(["pretrain", "--batch_size", "1", *quiet]) == 0
        assert main(["skel", *quiet]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out[-2:]] == ["pretrain", "skel"]
    pipe = MultiViewPipeline.from_pretrained(work / "runs/pretrain/pipeline")
    trained = json.loads((work / "runs/vae/vae/config.json").read_text())
    assert pipe.vae.config.scaling_factor == trained["scaling_factor"]
    assert (work / "runs/skel/skel" / skel.POSESCORE_FILE).is_file()


def test_skel_alone_uses_the_default_chain_vae(empty_dir_with_tiny_chain, capsys):
    from drpose.train.__main__ import main

    work, _ = empty_dir_with_tiny_chain
    assert main(["skel", "--train.steps", "1", "--train.progress", "false"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("skel: held-out PCK")
    assert (work / "runs/skel/skel" / skel.POSESCORE_FILE).is_file()
    assert not (work / "runs/vae").exists()
