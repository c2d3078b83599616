"""DrPose's experiment in miniature, on the CPU: ``python -m drpose.eval experiment --out DIR``.

The paper's structure with what is free here (real motion only; :mod:`drpose.eval.pose_split`):

* poses: CMU subject 1 clips 01 and 03 and ``Boxing_Toes`` from the Debian package
  ``assimp-testmodels`` (BVH, fitted to SMPL-X by :mod:`drpose.motion.bvh_fit`), or the packaged
  CMU sample (the first 10 s of clips 01 and 03) when the package is missing; split by difficulty
  (mean joint distance from the rest pose) into an easy pool, a hard pool, a judge pool and
  held-out hard poses from windows no stage trains on;
* renders of every pool (:mod:`drpose.data.multiview`): true normal and colour views;
* a VAE and the reward's g_skel on the easy pool; a judge g_skel (another seed, another width)
  on the judge pool;
* models, each evaluated on every held-out hard pose: (a) ``base``: the tiny multi-view model
  pretrained on the easy pool; (b) ``drpose``: (a) fine-tuned with PoseScore on the hard pool's
  front images and joints only (LoRA, K = 2, w_KL = 0.01); (c) ``upper``: (a) fine-tuned with
  the full multi-view diffusion loss on the hard pool's renders (what 3D scans would give);
  (d) ablations of (b): ``no_kl`` (w_KL = 0), ``k1`` (K = 1), ``full`` (full fine-tuning). (a)-(c)
  for every seed of ``seeds``, (d) for ``ablation_seeds``; (b) and (c) fine-tune on the same
  5/6 of the hard pool (the renders' ``train`` split) for the same number of steps;
* judges the reward never sees (:mod:`drpose.reward.judges`): silhouette IoU per view, mean
  angular error of normals in the union of the masks, colour PSNR / SSIM, the judge g_skel's
  PoseScore; the reward's own PoseScore next to them;
* statistics: mean +- std over seeds, per-pose paired sign tests against the base model,
  training curves (held-out reward PoseScore, judge PoseScore, IoU at every checkpoint).

Every stage writes its own folder under DIR and marks it finished with ``done.json`` (holding
its result and wall time); a rerun reuses finished stages, and an interrupted training stage
resumes from its last checkpoint. Outputs: ``results.md``, ``results.csv``, ``curves.png``,
``grid.png``, ``config.json``. Mesh metrics of carved reconstructions are not computed: at 64 px
the carved meshes do not resolve the difference (README, mesh benchmark).
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from statistics import mean, stdev
from typing import Any

import numpy as np
import torch

from drpose._progress import progress
from drpose.data.multiview import MultiViewRenders, RenderConfig, load_or_build
from drpose.data.stream import TensorPairs
from drpose.eval.pose_split import POOLS, PoseSplit, SplitConfig, pool_summary, split_poses
from drpose.motion.select import pose_features
from drpose.motion.sequence import PoseSequence, concatenate
from drpose.pipelines.default import DONE_FILE
from drpose.pipelines.multiview import MultiViewPipeline
from drpose.reward import PoseScore, judges
from drpose.train import pretrain
from drpose.train import skel as skel_stage
from drpose.train import vae as vae_stage
from drpose.train.engine import TrainConfig, Trainer, has_checkpoint
from drpose.train.reward import RewardConfig, RewardTuner, reward_step_fn
from drpose.train.rollout import sample

BVH_DIR = "/usr/share/assimp/models/BVH"  # Debian's assimp-testmodels
BVH_CLIPS = ("01_01.bvh", "01_03.bvh", "Boxing_Toes.bvh")
ABLATIONS = ("no_kl", "k1", "full")
REWARD_SKEL_SEED = 0  # the reward's g_skel; the judge's takes ExperimentConfig.judge_seed
METRICS = ("reward_posescore", "judge_posescore", "iou", "normal_error_deg", "psnr", "ssim")
HIGHER_IS_BETTER = {"reward_posescore": True, "judge_posescore": True, "iou": True,
                    "normal_error_deg": False, "psnr": True, "ssim": True}
LABELS = {"reward_posescore": "reward PoseScore", "judge_posescore": "judge PoseScore",
          "iou": "silhouette IoU", "normal_error_deg": "normal error (deg)",
          "psnr": "colour PSNR (dB)", "ssim": "colour SSIM"}
MODEL_LABELS = {"base": "(a) base", "drpose": "(b) DrPose", "upper": "(c) upper bound",
                "no_kl": "(d) DrPose, no KL", "k1": "(d) DrPose, K = 1",
                "full": "(d) DrPose, full fine-tuning"}


@dataclass
class ExperimentConfig:
    """What the experiment runs (module docstring); :meth:`quick` is the test-sized variant.

    bvh_dir / bvh_clips: BVH clips to fit (None or missing files: the packaged CMU sample).
    frame_step: BVH frames per row (4: CMU's 120 fps to 30); sample_step: the packaged sample's
    (30 fps) rows per row; max_frames: rows kept per clip (None: all). pretrain_steps: base
    model; finetune_steps: every fine-tuning (DrPose, ablations, upper bound); curve_every:
    steps between curve points (the checkpoints), each on the first ``curve_poses``
    held-out poses. reward_lr: LoRA runs;
    full_lr: the full fine-tuning ablation; upper_lr: the upper bound. num_steps: DDIM steps
    of every evaluation rollout (fixed noise, seed ``eval_seed + pose``); training rollouts keep
    :class:`~drpose.train.reward.RewardConfig`'s T = 20.
    """

    split: SplitConfig = field(default_factory=SplitConfig)
    bvh_dir: str | None = BVH_DIR
    bvh_clips: tuple[str, ...] = BVH_CLIPS
    frame_step: int = 4
    sample_step: int = 1
    max_frames: int | None = None
    resolution: int = 64
    vae_steps: int = 300
    skel_steps: int = 300
    reward_channels: tuple[int, int] = (48, 96)
    judge_channels: tuple[int, int] = (32, 64)
    judge_seed: int = 1
    pretrain_steps: int = 400
    seeds: tuple[int, ...] = (0, 1, 2)
    finetune_steps: int = 60
    reward_lr: float = 1e-2
    full_lr: float = 1e-4
    upper_lr: float = 1e-3
    ablations: tuple[str, ...] = ABLATIONS
    ablation_seeds: tuple[int, ...] = (0,)
    curve_every: int = 20
    curve_poses: int = 6
    num_steps: int = 20
    eval_seed: int = 1234
    grid_poses: int = 4
    progress: bool = True

    def __post_init__(self) -> None:
        unknown = sorted(set(self.ablations) - set(ABLATIONS))
        if unknown:
            raise ValueError(f"unknown ablations {unknown}; known: {ABLATIONS}")
        if not self.seeds:
            raise ValueError("seeds must name at least one seed")
        if (self.judge_seed == REWARD_SKEL_SEED
                or tuple(self.judge_channels) == tuple(self.reward_channels)):
            raise ValueError(f"the judge g_skel must differ from the reward's in seed (reward: "
                             f"{REWARD_SKEL_SEED}, judge_seed={self.judge_seed}) and width "
                             f"(reward_channels={self.reward_channels}, judge_channels="
                             f"{self.judge_channels})")

    @classmethod
    def quick(cls) -> ExperimentConfig:
        """A minute-sized run for tests: the packaged clips, tiny pools, few steps, 1 seed."""
        return cls(split=SplitConfig(window=20, easy=18, hard=12, judge=12, held_out_windows=2,
                                     per_window=2),
                   bvh_dir=None, sample_step=2, vae_steps=20, skel_steps=20, pretrain_steps=20,
                   seeds=(0,), finetune_steps=4, curve_every=2, curve_poses=2, num_steps=4,
                   grid_poses=2, ablations=("no_kl",))


# -- stages ------------------------------------------------------------------------------------


class Stages:
    """Runs named stages once: ``DIR/<name>/done.json`` holds a finished stage's result."""

    def __init__(self, out: Path, total: int) -> None:
        self.out = out
        self.total = total
        self.count = 0

    def folder(self, name: str) -> Path:
        return self.out / name

    def run(self, name: str, fn: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        self.count += 1
        folder = self.folder(name)
        done = folder / DONE_FILE
        if done.is_file():
            print(f"[{self.count}/{self.total}] {name}: done before, reused", flush=True)
            return json.loads(done.read_text())
        print(f"[{self.count}/{self.total}] {name} ...", flush=True)
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        result = fn(folder)
        result = {**result, "seconds": time.perf_counter() - started}
        _write_json(done, result)
        print(f"[{self.count}/{self.total}] {name}: {result['seconds']:.0f} s", flush=True)
        return result


def _write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    tmp.replace(path)


def _train(config: ExperimentConfig, out: Path, name: str, **options: Any) -> TrainConfig:
    return TrainConfig(name=name, runs_dir=str(out), progress=config.progress, **options)


# -- poses -------------------------------------------------------------------------------------


def load_clips(config: ExperimentConfig) -> list[PoseSequence]:
    """The clips: the BVH files fitted to SMPL-X, or the packaged CMU sample (module
    docstring)."""
    from drpose.motion.bvh_fit import fit_bvh
    from drpose.motion.load import default_pose_sequences

    paths = [Path(config.bvh_dir) / clip for clip in config.bvh_clips] if config.bvh_dir else []
    if paths and all(p.is_file() for p in paths):
        clips = []
        for path in paths:
            sequence, report = fit_bvh(path, frame_step=config.frame_step,
                                       max_frames=config.max_frames)
            print(f"  {path.name}: {report.summary()}", flush=True)
            clips.append(sequence)
        return clips
    if paths:
        warnings.warn(f"{config.bvh_dir}: BVH clips missing (apt-get install "
                      "assimp-testmodels); using the packaged CMU sample", stacklevel=2)
    return [c.take(slice(0, config.max_frames, config.sample_step))
            for c in default_pose_sequences()]


def poses_stage(config: ExperimentConfig, folder: Path) -> dict[str, Any]:
    """Fit / load the clips, split them, write each pool as a PoseSequence ``<pool>.npz``."""
    clips = load_clips(config)
    merged, clip_ids = concatenate(clips)
    features = pose_features(merged)
    split = split_poses(features, clip_ids, config.split)
    merged.save(folder / "all.npz")
    np.savez(folder / "split.npz", clip_ids=clip_ids, features=features,
             **{name: split.pool(name) for name in POOLS}, windows=split.windows,
             held_windows=split.held_windows, unused_windows=split.unused_windows)
    for name in POOLS:
        merged.take(split.pool(name)).save(folder / f"{name}.npz")
    return {"clips": [c.source for c in clips], "frames": [len(c) for c in clips],
            "easy_threshold_m": split.easy_threshold, "hard_threshold_m": split.hard_threshold,
            "windows": len(split.windows), "held_windows": len(split.held_windows),
            "pools": pool_summary(features, split)}


def load_split(folder: Path) -> PoseSplit:
    """The :class:`PoseSplit` a poses stage wrote to ``folder``."""
    with np.load(folder / "split.npz") as data:
        arrays = {name: data[name] for name in data.files}
    return PoseSplit(**{name: arrays[name] for name in (*POOLS, "windows", "held_windows",
                                                        "unused_windows")},
                     easy_threshold=math.nan, hard_threshold=math.nan)


def render_config(config: ExperimentConfig, poses: Path, pool: str) -> RenderConfig:
    """Renders of every pose of a pool file (farthest point sampling over all of them only
    orders them); palettes differ per pool."""
    count = len(PoseSequence.load(poses / f"{pool}.npz"))
    return RenderConfig(num_poses=count, resolution=config.resolution,
                        motion=str(poses / f"{pool}.npz"), seed=POOLS.index(pool))


# -- judges on generated views -----------------------------------------------------------------


class Judge:
    """Evaluates a pipeline on held-out renders: per pose, one gradient-free rollout from fixed
    noise, scored by the reward, the judge g_skel and the image judges."""

    def __init__(self, held: MultiViewRenders, reward: PoseScore, judge: PoseScore,
                 config: ExperimentConfig) -> None:
        self.held = held
        self.reward = reward
        self.judge = judge
        self.config = config

    @torch.no_grad()
    def generate(self, pipe: MultiViewPipeline, index: int) -> torch.Tensor:
        """x0 rows ``(2 * V, 4, h, w)`` of held-out pose ``index``."""
        generator = torch.Generator().manual_seed(self.config.eval_seed + index)
        cond = pipe.encode_condition(self.held.images(slice(index, index + 1)),
                                     generator=generator)
        return sample(pipe, cond, num_steps=self.config.num_steps, guidance_scale=1.0, eta=0.0,
                      generator=generator)

    @torch.no_grad()
    def score(self, pipe: MultiViewPipeline, indices: list[int] | None = None,
              keep_images: int = 0, desc: str = "judges") -> dict[str, Any]:
        """Per-pose metric lists (:data:`METRICS`, plus ``iou_views``) and, for the first
        ``keep_images`` poses, the decoded views ``images`` (n, 2, V, 3, R, R) uint8."""
        indices = list(range(len(self.held))) if indices is None else indices
        out: dict[str, list] = {name: [] for name in (*METRICS, "iou_views")}
        kept = []
        scorers = {"reward": self.reward, "judge": self.judge}
        for n, index in enumerate(progress(indices, desc=desc, enabled=self.config.progress)):
            joints = self.held.normalized_joints(slice(index, index + 1))
            scores, images = judges.judge_rollout(pipe, self.generate(pipe, index),
                                                  self.truth(index), joints, scorers)
            for name, value in scores.items():
                out[name].append(value)
            if n < keep_images:
                kept.append((images * 255 + 0.5).to(torch.uint8))
        if kept:
            out["images"] = torch.stack(kept)
        return out

    def truth(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        normals, colours = self.held.views(index)
        return normals, colours, self.held.masks[index, :, 0].bool()


def _summary(scores: dict[str, Any]) -> dict[str, float]:
    return {name: mean(scores[name]) for name in METRICS}


def save_scores(folder: Path, scores: dict[str, Any]) -> dict[str, Any]:
    """Write ``images.npy`` (when kept) and return the JSON-able rest with means."""
    images = scores.pop("images", None)
    if images is not None:
        np.save(folder / "images.npy", images.numpy())
    return {"per_pose": scores, "mean": _summary(scores)}


# -- fine-tuning -------------------------------------------------------------------------------


def reward_config(config: ExperimentConfig, out: Path, kind: str, seed: int) -> RewardConfig:
    """The reward fine-tuning config of model ``kind`` (``drpose`` or an ablation)."""
    lr = config.full_lr if kind == "full" else config.reward_lr
    base = RewardConfig(
        train=_train(config, out, f"{kind}_s{seed}", steps=config.finetune_steps, lr=lr,
                     seed=seed, checkpoint_every=config.curve_every, log_every=1),
        image_every=0, eval_seed=config.eval_seed)
    changes = {"no_kl": {"kl_weight": 0.0}, "k1": {"trained_steps": 1},
               "full": {"finetune": "full"}}.get(kind, {})
    return replace(base, **changes)


def curve_point(judge: Judge, pipe: MultiViewPipeline, step: int) -> dict[str, float]:
    count = min(judge.config.curve_poses, len(judge.held))
    scores = judge.score(pipe, list(range(count)), desc=f"curve @{step}")
    return {"step": step, **_summary(scores)}


def reward_stage(config: ExperimentConfig, out: Path, kind: str, seed: int, judge: Judge,
                 hard: MultiViewRenders, folder: Path) -> dict[str, Any]:
    """Fine-tune ``base_s<seed>`` with PoseScore (resuming from a checkpoint), with a curve
    point at every checkpoint; then every held-out pose."""
    rc = reward_config(config, out, kind, seed)
    pipe = MultiViewPipeline.from_pretrained(out / f"base_s{seed}" / "pipeline")
    train = hard.subset("train")
    data = TensorPairs(train.colours[:, train.config.input_view], train.normalized_joints())
    tuner = RewardTuner(rc, pipe, judge.reward)
    trainer = Trainer(rc.train, pipe.unet, tuner.parameters)
    trainer.resume()
    curve_file = folder / "curve.jsonl"
    points = ([json.loads(line) for line in curve_file.read_text().splitlines()]
              if curve_file.is_file() else [])
    points = [p for p in points if p["step"] <= trainer.step]
    if not points:
        points = [curve_point(judge, pipe, 0)]

    def write_curve() -> None:
        curve_file.write_text("".join(json.dumps(p) + "\n" for p in points))

    write_curve()

    def on_checkpoint(step: int) -> None:
        points.append(curve_point(judge, pipe, step))
        write_curve()

    trainer.fit(reward_step_fn(tuner, data), on_checkpoint=on_checkpoint)
    trainer.close()
    keep = config.grid_poses if kind == "drpose" and seed == config.seeds[0] else 0
    scores = judge.score(pipe, keep_images=keep, desc=f"{kind}_s{seed} judges")
    return {**save_scores(folder, scores), "curve": points, "train_log": _train_rewards(folder)}


def _train_rewards(folder: Path) -> list[dict[str, float]]:
    log = folder / "log.jsonl"
    if not log.is_file():
        return []
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    return [{"step": r["step"], "reward": r["reward"]} for r in rows if "reward" in r]


# -- the experiment ----------------------------------------------------------------------------


def model_runs(config: ExperimentConfig) -> list[tuple[str, int]]:
    """(kind, seed) of every evaluated model, in run order."""
    runs = [("base", s) for s in config.seeds]
    runs += [("drpose", s) for s in config.seeds]
    runs += [("upper", s) for s in config.seeds]
    runs += [(kind, s) for kind in config.ablations for s in config.ablation_seeds]
    return runs


def skel_configs(config: ExperimentConfig, out: Path, renders: dict[str, Path], vae: Path
                 ) -> dict[str, skel_stage.SkelConfig]:
    """The reward's g_skel (easy pool, seed 0, ``reward_channels``) and the judge's (judge
    pool, ``judge_seed``, ``judge_channels``)."""
    def make(name: str, pool: str, seed: int, channels: tuple[int, int]) -> skel_stage.SkelConfig:
        return skel_stage.SkelConfig(
            train=_train(config, out, name, steps=config.skel_steps, lr=2e-3, seed=seed,
                         checkpoint_every=100, log_every=20),
            renders=str(renders[pool]), vae=str(vae), channels=tuple(channels))

    return {"skel_reward": make("skel_reward", "easy", REWARD_SKEL_SEED,
                                    config.reward_channels),
            "skel_judge": make("skel_judge", "judge", config.judge_seed, config.judge_channels)}


def run_experiment(config: ExperimentConfig, out: str | Path) -> Path:
    """Run (or resume) every stage under ``out`` and write the report; returns ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "config.json", asdict(config))
    started = time.perf_counter()
    runs = model_runs(config)
    stages = Stages(out, total=1 + len(POOLS) + 3 + 1 + len(runs))
    results: dict[str, Any] = {}
    results["poses"] = stages.run("poses", lambda f: poses_stage(config, f))
    renders = {}
    for pool in POOLS:
        folder = stages.folder(f"renders_{pool}")
        renders[pool] = folder

        def make(f: Path, pool: str = pool) -> dict[str, Any]:
            data = load_or_build(f, render_config(config, out / "poses", pool))
            return {"poses": len(data)}

        stages.run(f"renders_{pool}", make)

    def vae_fn(folder: Path) -> dict[str, Any]:
        vc = vae_stage.VAEConfig(renders=str(renders["easy"]), train=_train(
            config, out, "vae", steps=config.vae_steps, lr=1e-3, checkpoint_every=100,
            log_every=20))
        vae_stage.run(vc, resume=has_checkpoint(vc.train.run_dir))
        return json.loads((folder / "metrics.json").read_text())

    stages.run("vae", vae_fn)
    vae_dir = out / "vae" / vae_stage.VAE_SUBFOLDER
    for name, sc in skel_configs(config, out, renders, vae_dir).items():
        def skel_fn(folder: Path, sc: skel_stage.SkelConfig = sc) -> dict[str, Any]:
            skel_stage.run(sc, resume=has_checkpoint(sc.train.run_dir))
            return json.loads((folder / "metrics.json").read_text())

        results[name] = stages.run(name, skel_fn)
    reward = skel_stage.load_posescore(out / "skel_reward" / skel_stage.SKEL_SUBFOLDER)
    judge_score = skel_stage.load_posescore(out / "skel_judge" / skel_stage.SKEL_SUBFOLDER)
    held = MultiViewRenders.load(renders["held_out"])
    hard = MultiViewRenders.load(renders["hard"])
    judge = Judge(held, reward, judge_score, config)

    def truth_fn(folder: Path) -> dict[str, Any]:
        vae = vae_stage.load_vae(vae_dir)
        latents = skel_stage.view_latents(vae, held)
        joints = held.normalized_joints()
        masks = [judges.silhouette_iou(judges.foreground_mask(held.views(i)[0]),
                                       held.masks[i, :, 0].bool()).mean() for i in range(len(held))]
        return {"mean": {"reward_posescore": float(reward(latents, joints).mean()),
                         "judge_posescore": float(judge_score(latents, joints).mean()),
                         "mask_rule_iou": float(torch.stack(masks).mean())}}

    results["truth"] = stages.run("truth", truth_fn)
    models: dict[tuple[str, int], dict[str, Any]] = {}
    for kind, seed in runs:
        name = f"{kind}_s{seed}"
        models[(kind, seed)] = stages.run(name, lambda f, kind=kind, seed=seed: model_stage(
            config, out, kind, seed, judge, hard, renders, f))
    results["models"] = models
    results["wall_s"] = time.perf_counter() - started
    write_report(config, out, results, held)
    return out


def model_stage(config: ExperimentConfig, out: Path, kind: str, seed: int, judge: Judge,
                hard: MultiViewRenders, renders: dict[str, Path], folder: Path
                ) -> dict[str, Any]:
    """Train (resuming) and judge one model (module docstring)."""
    if kind in ("drpose", *ABLATIONS):
        return reward_stage(config, out, kind, seed, judge, hard, folder)
    if kind == "base":
        pc = pretrain.PretrainConfig(
            train=_train(config, out, folder.name, steps=config.pretrain_steps, lr=1e-3,
                         seed=seed, checkpoint_every=100, log_every=20),
            renders=str(renders["easy"]), vae=str(out / "vae" / vae_stage.VAE_SUBFOLDER))
    else:
        pc = pretrain.PretrainConfig(
            train=_train(config, out, folder.name, steps=config.finetune_steps,
                         lr=config.upper_lr, seed=seed, checkpoint_every=config.curve_every,
                         log_every=5),
            renders=str(renders["hard"]), init=str(out / f"base_s{seed}" / "pipeline"))
    pipeline = pretrain.run(pc, resume=has_checkpoint(pc.train.run_dir))
    pipe = MultiViewPipeline.from_pretrained(pipeline)
    keep = config.grid_poses if seed == config.seeds[0] else 0
    return save_scores(folder, judge.score(pipe, keep_images=keep, desc=f"{folder.name} judges"))


# -- report ------------------------------------------------------------------------------------


def model_table(config: ExperimentConfig, models: dict) -> list[dict[str, Any]]:
    """One row per model kind: per metric mean and std over seeds of the per-seed means."""
    rows = []
    for kind in ("base", "drpose", "upper", *config.ablations):
        seeds = sorted(s for k, s in models if k == kind)
        if not seeds:
            continue
        row: dict[str, Any] = {"model": kind, "label": MODEL_LABELS[kind], "seeds": len(seeds)}
        for metric in METRICS:
            values = [models[(kind, s)]["mean"][metric] for s in seeds]
            row[metric] = mean(values)
            row[f"{metric}_std"] = stdev(values) if len(values) > 1 else math.nan
        rows.append(row)
    return rows


def paired(models: dict, kind: str, seeds: tuple[int, ...], metric: str) -> judges.SignTest:
    """Sign test of ``kind`` against ``base`` over held-out poses: per pose the difference
    (oriented so positive is better) averaged over the seeds both have."""
    common = [s for s in seeds if (kind, s) in models and ("base", s) in models]
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    diffs = np.mean([np.subtract(models[(kind, s)]["per_pose"][metric],
                                 models[("base", s)]["per_pose"][metric]) for s in common], axis=0)
    return judges.sign_test((sign * diffs).tolist())


def _fmt(value: float, std: float, metric: str) -> str:
    digits = 4 if "posescore" in metric else 3 if metric in ("iou", "ssim") else 2
    text = f"{value:.{digits}f}"
    return text if math.isnan(std) else f"{text} ± {std:.{digits}f}"


def mean_curve(models: dict, kind: str) -> list[dict[str, float]]:
    """The curve points of ``kind`` averaged over its seeds (steps every seed has)."""
    curves = [m["curve"] for (k, _), m in models.items() if k == kind and "curve" in m]
    if not curves:
        return []
    steps = sorted(set.intersection(*[{p["step"] for p in c} for c in curves]))
    out = []
    for step in steps:
        points = [next(p for p in c if p["step"] == step) for c in curves]
        out.append({"step": step, **{m: mean(p[m] for p in points) for m in METRICS}})
    return out


def hacking_verdict(curve: list[dict[str, float]]) -> str:
    """Sentences on a curve: reward and judges from the first point to the last, and every
    interval between curve points in which the reward rose while a judge fell (reward hacking,
    or its onset when the whole run still looks fine)."""
    if len(curve) < 2:
        return "No curve (fewer than two points)."
    first, last = curve[0], curve[-1]
    d = {m: last[m] - first[m] for m in ("reward_posescore", "judge_posescore", "iou")}
    text = (f"From step {first['step']} to {last['step']} the held-out reward PoseScore "
            f"changed by {d['reward_posescore']:+.5f}, the judge PoseScore by "
            f"{d['judge_posescore']:+.5f} and the silhouette IoU by {d['iou']:+.4f}.")
    falling = [LABELS[m] for m in ("judge_posescore", "iou") if d[m] < 0]
    if d["reward_posescore"] > 0 and falling:
        text += (f" The reward rose while the {' and the '.join(falling)} fell: this is reward "
                 "hacking (the model pleases the reward's g_skel, not the true views).")
    elif d["reward_posescore"] > 0:
        text += " The reward rose and the judges did not fall."
    else:
        text += " The reward did not rise on the held-out poses."
    for start, end in itertools.pairwise(curve):
        step = {m: end[m] - start[m] for m in ("reward_posescore", "judge_posescore", "iou")}
        fell = [f"the {LABELS[m]} fell by {-step[m]:.{5 if m != 'iou' else 4}f}"
                for m in ("judge_posescore", "iou") if step[m] < 0]
        if step["reward_posescore"] > 0 and fell:
            text += (f" From step {start['step']} to {end['step']} the reward rose by "
                     f"{step['reward_posescore']:.5f} while {' and '.join(fell)}: reward "
                     "hacking sets in there.")
    return text


def final_verdict(table: list[dict], kind: str) -> str | None:
    """A sentence on the final model ``kind`` against the base model: whether the reward rose
    and which judges got worse (None when either row is missing)."""
    base_row = next((r for r in table if r["model"] == "base"), None)
    row = next((r for r in table if r["model"] == kind), None)
    if base_row is None or row is None:
        return None
    up = row["reward_posescore"] > base_row["reward_posescore"]
    worse = [LABELS[m] for m in METRICS[1:]
             if (row[m] - base_row[m]) * (1 if HIGHER_IS_BETTER[m] else -1) < 0]
    return (f"{MODEL_LABELS[kind]} against the base model: the reward's PoseScore "
            f"{'rose' if up else 'did not rise'}; judges that got worse: "
            f"{', '.join(worse) if worse else 'none'}."
            + (" The reward rose while judges fell: reward hacking." if up and worse else ""))


def plot_curves(config: ExperimentConfig, models: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, left = plt.subplots(figsize=(7, 4.2), dpi=120)
    right = left.twinx()
    for kind, style in (("drpose", "-"), *[(k, ":") for k in config.ablations]):
        curve = mean_curve(models, kind)
        if not curve:
            continue
        steps = [p["step"] for p in curve]
        for metric, axes, colour in (("reward_posescore", left, "tab:red"),
                                     ("judge_posescore", left, "tab:blue"),
                                     ("iou", right, "tab:green")):
            values = [p[metric] - curve[0][metric] for p in curve]
            axes.plot(steps, values, style, color=colour, marker="o", ms=3,
                      label=f"{MODEL_LABELS[kind]}: {LABELS[metric]}")
    left.axhline(0, color="0.6", lw=0.8)
    left.set_xlabel("fine-tuning step")
    left.set_ylabel("PoseScore change since step 0 (held-out)")
    right.set_ylabel("silhouette IoU change since step 0")
    handles = left.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    left.legend(handles[0] + more[0], handles[1] + more[1], fontsize=6, loc="best")
    left.set_title(f"held-out curves, mean over seeds (first {config.curve_poses} poses)")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def save_grid(out: Path, held: MultiViewRenders, count: int) -> Path | None:
    """``grid.png``: per held-out pose 6 rows of [input | 6 views]: true normals, true colours,
    base normals, base colours, DrPose normals, DrPose colours (first seed)."""
    from drpose.render.conditions import save_view_grid

    seed_dirs = sorted(out.glob("base_s*/images.npy")), sorted(out.glob("drpose_s*/images.npy"))
    if not seed_dirs[0] or not seed_dirs[1]:
        return None
    base = torch.from_numpy(np.load(seed_dirs[0][0])).float() / 255
    drpose = torch.from_numpy(np.load(seed_dirs[1][0])).float() / 255
    count = min(count, base.shape[0], drpose.shape[0])
    rows = []
    for i in range(count):
        normals, colours = held.views(i)
        blank = torch.ones_like(held.images(i))
        for n, row in enumerate((normals, colours, base[i, 0], base[i, 1], drpose[i, 0],
                                 drpose[i, 1])):
            rows.append(torch.cat([(held.images(i) if n == 0 else blank)[None], row]))
    return save_view_grid(torch.stack(rows), out / "grid.png")


def write_report(config: ExperimentConfig, out: Path, results: dict, held: MultiViewRenders
                 ) -> None:
    """results.md, results.csv, curves.png, grid.png."""
    models = results["models"]
    table = model_table(config, models)
    with open(out / "results.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["model", "seeds", *[c for m in METRICS for c in (m, f"{m}_std")]])
        for row in table:
            writer.writerow([row["model"], row["seeds"],
                             *[f"{row[c]:.6g}" for m in METRICS for c in (m, f"{m}_std")]])
    plot_curves(config, models, out / "curves.png")
    save_grid(out, held, config.grid_poses)
    stage_seconds = {f.parent.name: json.loads(f.read_text()).get("seconds", math.nan)
                     for f in sorted(out.glob(f"*/{DONE_FILE}"))}
    lines = ["# DrPose in miniature: held-out hard poses, judged by what the reward never sees",
             "", f"Wall time of this call: {results['wall_s']:.0f} s; all stages, summed over "
             f"the calls that ran them: {sum(stage_seconds.values()):.0f} s. Config: "
             "`config.json`.", "", "## Poses", "",
             f"Clips: {', '.join(Path(c).name for c in results['poses']['clips'])} "
             f"({sum(results['poses']['frames'])} frames). Difficulty = mean distance of "
             "SMPL-X joints 1-21 from the rest pose, pelvis-relative, heading-aligned (m); easy "
             f"<= {results['poses']['easy_threshold_m']:.3f} m, hard >= "
             f"{results['poses']['hard_threshold_m']:.3f} m. Held-out poses come from "
             f"{results['poses']['held_windows']} of {results['poses']['windows']} windows of "
             f"{config.split.window} frames; the {config.split.gap} window(s) on each side are "
             "used by nothing.", "",
             "| pool | used by | poses | difficulty (m), mean [min, max] | joint std (m) |",
             "|---|---|---|---|---|"]
    users = {"easy": "VAE, base model, reward g_skel", "hard": "DrPose (front image + "
             "joints), upper bound (renders)", "judge": "judge g_skel",
             "held_out": "evaluation only"}
    for pool, info in results["poses"]["pools"].items():
        lines.append(f"| {pool} | {users[pool]} | {info['poses']} | {info['difficulty_m']:.3f} "
                     f"[{info['difficulty_min_m']:.3f}, {info['difficulty_max_m']:.3f}] | "
                     f"{info['joint_std_m']:.4f} |")
    lines += ["", "The two g_skels on their own pools' held-out renders (the skel stage's "
              "metrics): " + "; ".join(
                  f"{name.removeprefix('skel_')}: channels {results[name]['config']['channels']}"
                  f", seed {results[name]['config']['train']['seed']}, PCK@0.1 "
                  f"{results[name]['pck']:.2f}, pair accuracy {results[name]['pair_accuracy']:.2f}"
                  for name in ("skel_reward", "skel_judge")) + "."]
    truth = results["truth"]["mean"]
    lines += ["", "## Results", "",
              f"{len(held)} held-out hard poses, one rollout each ({config.num_steps} DDIM "
              f"steps, fixed noise); mean ± std over seeds of the per-seed means. True views "
              f"score reward PoseScore {truth['reward_posescore']:.4f}, judge PoseScore "
              f"{truth['judge_posescore']:.4f} (the ceiling); the silhouette rule recovers the "
              f"true masks with IoU {truth['mask_rule_iou']:.3f}. Mesh metrics of carved "
              "reconstructions: not computed (64 px views do not resolve the difference; see "
              "the README's mesh benchmark).", "",
              "| model | seeds | " + " | ".join(LABELS[m] for m in METRICS) + " |",
              "|---|---|" + "---|" * len(METRICS)]
    for row in table:
        lines.append(f"| {row['label']} | {row['seeds']} | " + " | ".join(
            _fmt(row[m], row[f"{m}_std"], m) for m in METRICS) + " |")
    lines += ["", "Per-pose paired comparison against the base model (same seed, averaged over "
              "seeds): poses better / worse / tied, exact two-sided sign test p.", "",
              "| model | " + " | ".join(LABELS[m] for m in METRICS) + " |",
              "|---|" + "---|" * len(METRICS)]
    for kind in ("drpose", "upper", *config.ablations):
        seeds = config.seeds if kind in ("drpose", "upper") else config.ablation_seeds
        if not any((kind, s) in models for s in seeds):
            continue
        cells = []
        for metric in METRICS:
            test = paired(models, kind, seeds, metric)
            cells.append(f"{test.better}/{test.worse}/{test.ties}, p = {test.p_value:.3g}")
        lines.append(f"| {MODEL_LABELS[kind]} | " + " | ".join(cells) + " |")
    lines += ["", "## Training curves (`curves.png`)", "", hacking_verdict(mean_curve(models,
                                                                                  "drpose"))]
    for kind in config.ablations:
        curve = mean_curve(models, kind)
        if curve:
            lines.append(f"{MODEL_LABELS[kind]}: {hacking_verdict(curve)}")
    verdicts = [final_verdict(table, kind) for kind in ("drpose", *config.ablations)]
    if any(verdicts):
        lines += ["", "Final models:", ""] + [f"- {v}" for v in verdicts if v]
    lines += ["", "`grid.png`: per held-out pose, rows true normals, true colours, base "
              "normals, base colours, DrPose normals, DrPose colours (first seed); the first "
              "column of the first row is the input image.", "",
              "| stage | seconds |", "|---|---|"]
    lines += [f"| {name} | {seconds:.0f} |" for name, seconds in stage_seconds.items()]
    (out / "results.md").write_text("\n".join(lines) + "\n")
