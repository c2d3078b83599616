"""DrPose reward fine-tuning: the main job of ``python -m drpose.train``.

Per sample (image I, ground-truth SMPL-X joints J): a DRTune rollout (:mod:`drpose.train.rollout`)
generates multi-view latents x0 conditioned on I; the loss is

    L = (1 - PoseScore(x0, J)) + w_KL * MSE(eps_w, eps_w0)   at the trained steps,

minimised over LoRA adapters of the UNet (default; the KL reference eps_w0 is the same UNet with
its adapters disabled, so no second UNet is held) or over the full UNet (a frozen copy is kept
for the KL reference, optionally on the CPU). Gradient checkpointing is non-reentrant and on.
Before and after training, PoseScore is measured on held-out poses with full, gradient-free
rollouts from fixed noise; both numbers and before/after grids land in the run folder.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import mean

import torch
from accelerate import PartialState
from peft import LoraConfig
from torch import Tensor, nn

from drpose._cli import UsageError
from drpose._devices import devices_of, require_device
from drpose._files import make_readable, save_safetensors
from drpose.body.joints import SMPLX_PARENTS
from drpose.data.dataset import DrPoseDataset
from drpose.data.multiview import MultiViewRenders
from drpose.data.stream import (
    DrPose15KPairs,
    Inputs,
    PosePairs,
    StepBatches,
    TensorPairs,
    step_picks,
)
from drpose.pipelines.default import default_chain_dir
from drpose.pipelines.multiview import ImageEncodings, MultiViewCondition, MultiViewPipeline
from drpose.render.conditions import save_view_grid
from drpose.render.draw import draw_skeletons
from drpose.reward import PoseScore, latents_from_rows
from drpose.reward.judges import judge_rollout
from drpose.train import pretrain
from drpose.train import skel as skel_stage
from drpose.train.conditions import CachedPairs, ConditionCache
from drpose.train.engine import (
    StepOutput,
    TrainConfig,
    Trainer,
    seed_everything,
    stage_device,
    weight_dtype,
)
from drpose.train.rollout import ModelStep, plan_rollout, rollout, sample

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
# (held-out sample index, its rollout's x0 rows (2*V, 4, h, w)) -> judge metrics by name
ViewJudge = Callable[[int, Tensor], dict[str, float]]


@dataclass
class RewardConfig:
    """Reward fine-tuning options (the defaults are the paper's where it states them)."""

    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        name="drpose", steps=100, lr=1e-2, checkpoint_every=25, log_every=5))
    num_steps: int = 20             # T: DDIM steps of a rollout
    trained_steps: int = 2          # K: steps that keep gradients
    early_stop: int = 8             # m: the rollout stops at a random step <= m before the end
    eta: float = 0.0                # DDIM eta of rollouts (training and evaluation)
    guidance_scale: float = 1.0     # CFG in rollouts and evaluation (open in the paper; 1 =
    #                                 conditional only; > 1: the gradient goes through both)
    kl_weight: float = 0.01         # w_KL
    finetune: str = "lora"          # "lora" | "full"
    lora_rank: int = 8
    lora_targets: tuple[str, ...] = LORA_TARGETS  # peft target module names of the UNet
    offload_reference: bool = False  # full fine-tuning: keep the frozen copy on the CPU
    gradient_checkpointing: bool = True
    batch_size: int = 1
    image_every: int = 20           # a PNG grid of a training sample every N steps (0: none)
    eval_samples: int = 8           # held-out samples for posescore_before/after
    eval_seed: int = 1234
    pipeline: str | None = None     # pipeline folder (save_pretrained / PSHuman format);
    #                                 None: the cached default tiny model (built when missing)
    skel: str | None = None         # g_skel folder of the ``skel`` stage; None: the default
    data: str | None = None         # a DrPose15K folder; None: the default multi-view renders
    held_out: int = 10              # DrPose15K: every N-th motion window is held out
    workers: int | None = None      # DataLoader processes reading training pairs ahead of the
    #                                 step; None: 4 on CUDA, 0 (in the training process) on CPU
    cache_dir: str | None = None    # where the default assets live ($DRPOSE_CACHE/default)
    cache_conditions: bool = False  # encode each training sample's image once, before the
    #                                 first step, into <run>/conditions (drpose.train.conditions)

    def __post_init__(self) -> None:
        if self.finetune not in ("lora", "full"):
            raise UsageError(f"--finetune must be 'lora' or 'full', got {self.finetune!r}")
        for name in ("num_steps", "trained_steps", "lora_rank", "batch_size", "image_every",
                     "eval_samples", "held_out"):
            value, least = getattr(self, name), 0 if name == "image_every" else 1  # 0: no grids
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise UsageError(f"--{name} must be an integer >= {least}, got {value!r}")
        if self.workers is not None and (isinstance(self.workers, bool) or
                                         not isinstance(self.workers, int) or self.workers < 0):
            raise UsageError(f"--workers must be an integer >= 0, got {self.workers!r}")

    def resolved_workers(self, device: torch.device) -> int:
        """``workers``, or its default for ``device``: 4 on CUDA (PNGs decode while the GPU
        steps), 0 on the CPU (the cores are the step's)."""
        if self.workers is not None:
            return self.workers
        return 4 if device.type == "cuda" else 0

    def check_inputs(self) -> None:
        """A :class:`UsageError` naming the flag when a given ``--pipeline``, ``--skel``,
        ``--data`` folder is missing or empty (checked before any work)."""
        for flag, folder in (("--pipeline", self.pipeline), ("--skel", self.skel),
                             ("--data", self.data)):
            if folder is None:
                continue
            path = Path(folder)
            if not path.is_dir():
                raise UsageError(f"{flag} {folder}: no such folder (leave {flag} out for the "
                                 "embedded default)")
            if not any(path.iterdir()):
                raise UsageError(f"{flag} {folder}: the folder is empty")


@dataclass
class RewardStep(StepOutput):
    """A step's loss and metrics, and the rollout's x0 (for the training grids)."""

    x0: Tensor | None = None


class RewardTuner:
    """Holds the pipeline, the reward and the reference model; computes one step's loss."""

    def __init__(self, config: RewardConfig, pipe: MultiViewPipeline, reward: PoseScore) -> None:
        self.config = config
        self.pipe = pipe
        self.reward = reward
        self.device = pipe.device
        require_device(self.device, "the pipeline's UNet", vae=pipe.vae,
                       image_encoder=pipe.image_encoder, image_normalizer=pipe.image_normalizer,
                       prompt_embeds=pipe.prompt_embeds, g_skel=reward)
        unet = pipe.unet
        unet.requires_grad_(False)
        for module in (pipe.vae, pipe.image_encoder):
            module.requires_grad_(False)
        self.frozen_unet: nn.Module | None = None
        # peft draws the adapters' initial values (lora_A) from the global generator: seeded
        # from --train.seed, two runs with one seed start from the same adapters, and under
        # torchrun every rank does (same seed on every rank), so no broadcast is needed
        seed_everything(config.train.seed)
        if config.finetune == "lora":
            unet.add_adapter(LoraConfig(r=config.lora_rank, lora_alpha=config.lora_rank,
                                        init_lora_weights="gaussian",
                                        target_modules=list(config.lora_targets)))
            # peft initialises B = 0: the adapted model starts equal to the base model
        else:
            device = "cpu" if config.offload_reference else pipe.device
            self.frozen_unet = copy.deepcopy(unet).to(device).eval()
            unet.requires_grad_(True)
        if config.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        self.parameters = [p for p in unet.parameters() if p.requires_grad]
        # trained weights stay fp32 over a bf16/fp16 base (AdamW's small updates vanish in
        # 16 bits; peft runs an fp32 adapter on its layer's input cast to fp32); the frozen
        # reference copy above keeps the base's dtype
        for parameter in self.parameters:
            parameter.data = parameter.data.float()
        # a non-finite loss is the trainer's to skip: no host sync per UNet call to check it
        unet.check_finite = False

    @contextlib.contextmanager
    def reference_model(self) -> Iterator[None]:
        """Inside: ``pipe.unet`` is the initial model (adapters off, or the frozen copy)."""
        unet = self.pipe.unet
        if self.frozen_unet is None:
            unet.disable_adapters()
            try:
                yield
            finally:
                unet.enable_adapters()
            return
        original_device = next(self.frozen_unet.parameters()).device
        self.frozen_unet.to(self.pipe.device)
        self.pipe.unet = self.frozen_unet
        try:
            yield
        finally:
            self.pipe.unet = unet
            self.frozen_unet.to(original_device)

    def body_latents(self, x0: Tensor) -> Tensor:
        """PoseScore's ``(B, V_body, 8, h, w)`` from the pipeline's rows (face view dropped)."""
        body = self.pipe.unet.config.num_body_views
        return latents_from_rows(x0, self.pipe.views)[:, :body]

    def reference_step(self) -> ModelStep:
        def step(latents: Tensor, t: Tensor, cond: MultiViewCondition) -> Tensor:
            with self.reference_model():
                return self.pipe.unet_step(latents, t, cond, self.config.guidance_scale)

        return step

    def encode(self, images: Inputs, generator: torch.Generator) -> MultiViewCondition:
        """The condition of a batch of images, or of their cached encodings."""
        if not isinstance(images, Tensor):
            images = ImageEncodings(*images)
        with torch.no_grad():
            return self.pipe.encode_condition(images, generator=generator)

    @torch.no_grad()
    def save_eval_grid(self, data: PosePairs, path: Path, count: int = 2) -> Path:
        """Grid of full rollouts for the first ``count`` held-out samples (fixed noise)."""
        count = min(count, len(data))
        generator = torch.Generator().manual_seed(self.config.eval_seed)
        images, joints = data.batch(torch.arange(count), self.device)
        cond = self.encode(images, generator)
        x0 = sample(self.pipe, cond, num_steps=self.config.num_steps,
                    guidance_scale=self.config.guidance_scale, eta=self.config.eta,
                    generator=generator)
        return save_grid(self.pipe, self.reward, x0, joints, path)

    def loss(self, images: Inputs, joints: Tensor, generator: torch.Generator) -> RewardStep:
        config = self.config
        cond = self.encode(images, generator)
        plan = plan_rollout(config.num_steps, config.trained_steps, config.early_stop, generator)
        result = rollout(self.pipe, cond, plan, num_steps=config.num_steps,
                         guidance_scale=config.guidance_scale, eta=config.eta,
                         generator=generator, reference_step=self.reference_step())
        score = self.reward(self.body_latents(result.x0), joints).mean()
        loss = (1 - score) + config.kl_weight * result.kl
        return RewardStep(loss, {"reward": float(score.detach()), "kl": float(result.kl.detach()),
                                 "stop_step": plan.stop}, x0=result.x0)

    def evaluate(self, data: PosePairs, *, reference: bool = False) -> list[float]:
        """PoseScore of each sample's full gradient-free rollout from fixed noise."""
        return self.evaluate_judged(data, reference=reference)[0]

    @torch.no_grad()
    def evaluate_judged(self, data: PosePairs, *, reference: bool = False,
                        judge: ViewJudge | None = None
                        ) -> tuple[list[float], dict[str, list[float]]]:
        """:meth:`evaluate`, and ``judge(index, x0)``'s metrics of each rollout (by name, one
        value per sample; empty without a judge)."""
        config = self.config
        scores = []
        judged: dict[str, list[float]] = {}
        context = self.reference_model() if reference else contextlib.nullcontext()
        with context:
            for index in range(len(data)):
                generator = torch.Generator().manual_seed(config.eval_seed + index)
                images, joints = data.batch(torch.tensor([index]), self.device)
                cond = self.encode(images, generator)
                x0 = sample(self.pipe, cond, num_steps=config.num_steps,
                            guidance_scale=config.guidance_scale, eta=config.eta,
                            generator=generator)
                scores.append(self.reward(self.body_latents(x0), joints))
                for name, value in (judge(index, x0) if judge else {}).items():
                    judged.setdefault(name, []).append(value)
        return torch.cat(scores).tolist(), judged


def default_data(renders: MultiViewRenders, eval_samples: int) -> tuple[PosePairs, PosePairs]:
    """The multi-view renders' train and held-out (image, joints) pairs (uint8 images)."""
    train, held = renders.subset("train"), renders.subset("eval")
    keep = slice(0, eval_samples)
    view = renders.config.input_view
    return (TensorPairs(train.colours[:, view], train.normalized_joints()),
            TensorPairs(held.colours[keep, view], held.normalized_joints(keep)))


@torch.no_grad()
def rendered_posescore(pipe: MultiViewPipeline, reward: PoseScore, held: MultiViewRenders,
                       eval_samples: int) -> float:
    """Mean PoseScore of the first ``eval_samples`` held-out poses' true views (``held``: the
    renders' held-out split, VAE-encoded as the pipeline encodes images): what a model that
    generated exactly the right pose would score, the scale against which ``posescore_before``
    -> ``posescore_after`` is read (metrics.json: ``posescore_true_views``)."""
    keep = slice(0, eval_samples)
    latents = skel_stage.view_latents(pipe.vae, held, index=keep).to(pipe.device)
    body = pipe.unet.config.num_body_views
    joints = held.normalized_joints(keep).to(pipe.device)
    return float(reward(latents[:, :body], joints).mean())


def check_image_side(side: int, pipe: MultiViewPipeline, pipeline: str | Path, source: str
                     ) -> None:
    """A :class:`UsageError` when ``source``'s images are not ``side`` = the pipeline's image
    side (a pipeline conditioned on another size generates nonsense, and a larger one costs
    hours per step)."""
    if side != pipe.image_side:
        raise UsageError(
            f"{source}: {side} px images, but pipeline {pipeline} generates "
            f"{pipe.image_side} px: give --data a DrPose15K folder built at its side "
            f"(python -m drpose.data build ... --resolution {pipe.image_side})")


def drpose15k_data(folder: str | Path, held_out: int, eval_samples: int
                   ) -> tuple[DrPose15KPairs, DrPose15KPairs]:
    """A DrPose15K folder's train and held-out (image, joints) pairs, split by motion window
    (:func:`window_split`): no held-out pose has a temporal neighbour in training. Images are
    read per item (:mod:`drpose.data.stream`), the split from the shards' indexes."""
    dataset = DrPoseDataset(folder)
    if not len(dataset):
        raise ValueError(f"{folder}: the dataset has no samples")
    train, held = window_split(torch.from_numpy(dataset.index["window"]),
                               torch.from_numpy(dataset.index["anchor"]), held_out)
    return DrPose15KPairs(dataset, train), DrPose15KPairs(dataset, held[:eval_samples])


def window_split(windows: Tensor, anchors: Tensor, held_out: int) -> tuple[Tensor, Tensor]:
    """Sample indices (train, held out) of a DrPose15K dataset whose samples belong to motion
    ``windows`` ``(N,)`` int (an FPS anchor frame, ``anchors`` ``(N,)`` bool, with its temporal
    neighbours): every ``held_out``-th window is held out whole. The held-out indices list
    each window's anchor first (in window order), then the other frames, so the first few
    evaluation samples are distinct poses."""
    held = windows % held_out == held_out - 1
    if not held.any():
        raise ValueError(f"no window is held out: {int(windows.max()) + 1} window(s) and "
                         f"--held_out {held_out}; lower --held_out")
    train = torch.nonzero(~held).flatten()
    # a stable sort on (not anchor, window) keeps frame order inside each group
    candidates = torch.nonzero(held).flatten()
    key = (~anchors[candidates]).long() * (int(windows.max()) + 1) + windows[candidates]
    return train, candidates[torch.sort(key, stable=True).indices]


@torch.no_grad()
def save_grid(pipe: MultiViewPipeline, reward: PoseScore, x0: Tensor, joints: Tensor,
              path: Path) -> Path:
    """PNG of generated views (rows: per object normal then colour) with the target skeletons
    (the ground-truth joints projected into each view) drawn over."""
    images = pipe.decode(x0.detach())  # (2*B*V, 3, H, W): [normal | colour] x objects x views
    views = pipe.views
    batch = x0.shape[0] // (2 * views)
    size = tuple(images.shape[-2:])
    keypoints, visible = reward.targets(joints.to(images), size)  # (B, V, J, 2)
    domains = images.unflatten(0, (2, batch, views))
    rows = []
    for b in range(batch):
        for domain in domains:
            body = domain[b][: keypoints.shape[1]]  # the face view (if any) has no skeleton
            rows.append(draw_skeletons(body, keypoints[b], visible[b],
                                       SMPLX_PARENTS[: joints.shape[1]]))
    return save_view_grid(torch.stack(rows), path)


def reward_step_fn(tuner: RewardTuner, train_data: PosePairs, rank: int = 0,
                   grid_dir: Path | None = None, batches: StepBatches | None = None
                   ) -> Callable[[int], StepOutput]:
    """The :meth:`Trainer.fit` step of reward fine-tuning: micro-batch ``index`` draws
    ``batch_size`` training pairs and the rollout's noise from ``step_generator(seed, index,
    rank)`` (:func:`drpose.data.stream.step_picks`); the pairs come from ``batches`` (loaded
    ahead), or are read when the step needs them. Every ``image_every`` optimisation steps
    its grid goes to ``grid_dir`` (None: no grids)."""
    config = tuner.config
    every = config.image_every * config.train.grad_accum

    def step(index: int) -> StepOutput:
        generator, picks = step_picks(config.train.seed, index, rank, len(train_data),
                                      config.batch_size)
        images, joints = (train_data.batch(picks, tuner.device) if batches is None
                          else batches.get(index, picks))
        out = tuner.loss(images, joints, generator)
        if grid_dir is not None and every and index % every == 0:
            save_grid(tuner.pipe, tuner.reward, out.x0, joints,
                      grid_dir / f"step_{index:07d}.png")
        return out

    return step


def default_view_judge(pipe: MultiViewPipeline, held: MultiViewRenders,
                       judge: PoseScore) -> ViewJudge:
    """Judges the reward never sees, of held-out sample ``index``'s rollout against its true
    renders ``held[index]``: silhouette IoU, normal error, colour PSNR / SSIM
    (:mod:`drpose.reward.judges`) and ``judge_posescore``, the PoseScore of a second g_skel."""
    joints = held.normalized_joints()

    def view_judge(index: int, x0: Tensor) -> dict[str, float]:
        normals, colours = held.views(index)
        truth = tuple(t.to(x0.device) for t in (normals, colours, held.masks[index, :, 0].bool()))
        scores, _ = judge_rollout(pipe, x0, truth, joints[index:index + 1].to(x0.device),
                                  {"judge": judge})
        scores.pop("iou_views")
        return scores

    return view_judge


def _add_evaluation(metrics: dict, when: str, scores: list[float],
                    judged: dict[str, list[float]]) -> None:
    metrics[f"posescore_{when}_each"] = scores
    metrics[f"posescore_{when}"] = mean(scores)
    for name, values in judged.items():
        metrics[f"{name}_{when}_each"] = values
        metrics[f"{name}_{when}"] = mean(values)


def train_reward(config: RewardConfig, pipe: MultiViewPipeline, reward: PoseScore,
                 train_data: PosePairs, eval_data: PosePairs, *, resume: bool = False,
                 stop_after: int | None = None, judge: ViewJudge | None = None
                 ) -> dict[str, float]:
    """Reward fine-tuning; writes ``metrics.json``, checkpoints, logs and grids to the run dir.

    ``stop_after`` ends the call after that many steps (an interruption, for tests); a later
    call with ``resume=True`` continues exactly. ``judge``: metrics of each held-out rollout
    the reward never sees, before and after (``<name>_before``, ``<name>_after`` and their
    ``_each`` lists in ``metrics.json``).
    """
    device = stage_device(config.train)
    # frozen weights in the compute dtype (bf16 on CUDA by default), trained ones fp32
    # (RewardTuner); on the CPU the run is float32 unless the pipeline was loaded otherwise
    dtype = weight_dtype(config.train.precision_on(device)) if device.type == "cuda" else None
    pipe.to(device, dtype)
    reward.to(device, dtype)
    tuner = RewardTuner(config, pipe, reward)
    trainer = Trainer(config.train, pipe.unet, tuner.parameters)
    run_dir = config.train.run_dir
    resumed = trainer.begin(resume)
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if resumed and metrics_path.is_file() else {}
    main = trainer.accelerator.is_main_process
    metrics["devices"] = module_devices(unet=pipe.unet, vae=pipe.vae,
                                        image_encoder=pipe.image_encoder, g_skel=reward,
                                        reference=tuner.frozen_unet)
    if "posescore_before" not in metrics:
        _add_evaluation(metrics, "before",
                        *tuner.evaluate_judged(eval_data, reference=True, judge=judge))
        if main:
            _write_json(metrics_path, {**metrics, "config": asdict(config)})
            with tuner.reference_model():
                tuner.save_eval_grid(eval_data, run_dir / "grid_before.png")
    rank = trainer.accelerator.process_index
    if config.cache_conditions:  # built by the main process, read by all
        folder = run_dir / "conditions"
        if main:
            ConditionCache.build(pipe, train_data, folder, workers=config.resolved_workers(device),
                                 show_progress=config.train.progress)
        trainer.accelerator.wait_for_everyone()
        train_data = CachedPairs(train_data, ConditionCache(folder))
    batches = StepBatches(train_data, config.batch_size, config.train.seed, rank,
                          config.train.steps * config.train.grad_accum, device=device,
                          workers=config.resolved_workers(device))
    step = reward_step_fn(tuner, train_data, rank, run_dir / "grids" if main else None, batches)
    last = trainer.fit(step, stop_after=stop_after)
    batches.close()
    trainer.close()
    if trainer.step < config.train.steps:
        return {**metrics, **last}
    _add_evaluation(metrics, "after", *tuner.evaluate_judged(eval_data, judge=judge))
    if device.type == "cuda":  # the whole stage's peak, evaluation included
        metrics["peak_gpu_memory_bytes"] = torch.cuda.max_memory_allocated(device)
    after = metrics["posescore_after_each"]
    metrics["improved"] = sum(a > b for a, b in zip(after, metrics["posescore_before_each"],
                                                    strict=True))
    metrics["steps"] = trainer.step
    if main:
        _write_json(metrics_path, {**metrics, "config": asdict(config)})
        tuner.save_eval_grid(eval_data, run_dir / "grid_after.png")
        if config.finetune == "lora":  # the adapters, as `python -m drpose.infer --lora` reads
            (run_dir / "lora").mkdir(exist_ok=True)
            save_safetensors(trainer.trainable_state(), run_dir / "lora" / "trainable.safetensors")
        else:
            pipe.unet.save_pretrained(run_dir / "unet")
            make_readable(run_dir / "unet")
    return metrics


Config = RewardConfig


def run(config: RewardConfig, *, resume: bool = False) -> dict[str, float]:
    """Load (or build and cache, for the defaults) the pipeline, g_skel and data; fine-tune."""
    config.check_inputs()
    cache = Path(config.cache_dir) if config.cache_dir else default_chain_dir()
    started = time.perf_counter()
    pipeline_dir = config.pipeline or pretrain.ensure_default(cache)
    skel_dir = config.skel or skel_stage.ensure_default(cache)
    pipe = MultiViewPipeline.from_pretrained(pipeline_dir)
    skel_stage.check_vae(skel_dir, pipe.vae, pipeline_dir)
    renders = None
    if config.data is None:
        renders_dir = pretrain.ensure_renders(cache)
        renders = MultiViewRenders.load(renders_dir)
        check_image_side(renders.config.resolution, pipe, pipeline_dir,
                         f"the default renders {renders_dir}")
        train_data, eval_data = default_data(renders, config.eval_samples)
    else:
        check_image_side(DrPoseDataset(config.data)[0]["image"].shape[-1], pipe, pipeline_dir,
                         f"--data {config.data}")
        train_data, eval_data = drpose15k_data(config.data, config.held_out, config.eval_samples)
    setup_s = time.perf_counter() - started
    reward = skel_stage.load_posescore(skel_dir)
    judge = judge_score = None
    if renders is not None and config.pipeline is None:  # judges on the true views (a judge
        # g_skel of the default chain reads the default VAE's latents)
        judge_score = skel_stage.load_posescore(skel_stage.ensure_judge(cache))
        judge_score.to(stage_device(config.train))
        judge = default_view_judge(pipe, renders.subset("eval"), judge_score)
    metrics = train_reward(config, pipe, reward, train_data, eval_data, resume=resume,
                           judge=judge)
    if "posescore_after" not in metrics:
        return metrics
    if renders is not None:
        held = renders.subset("eval")
        metrics["posescore_true_views"] = rendered_posescore(pipe, reward, held,
                                                             config.eval_samples)
        if judge_score is not None:
            metrics["judge_posescore_true_views"] = rendered_posescore(
                pipe, judge_score, held, config.eval_samples)
    metrics = {**metrics, "setup_s": setup_s, "total_s": time.perf_counter() - started}
    path = config.train.run_dir / "metrics.json"
    if PartialState().is_main_process:  # add the scale and the timings
        _write_json(path, {**json.loads(path.read_text()), **metrics})
    scale = (f" (true views: {metrics['posescore_true_views']:.4f})"
             if "posescore_true_views" in metrics else "")
    judges = ""
    if "judge_posescore_after" in metrics:
        judges = (f"; judges the reward never sees: judge PoseScore "
                  f"{metrics['judge_posescore_before']:.4f} -> "
                  f"{metrics['judge_posescore_after']:.4f} (true views: "
                  f"{metrics['judge_posescore_true_views']:.4f}), silhouette IoU "
                  f"{metrics['iou_before']:.3f} -> {metrics['iou_after']:.3f}, normal error "
                  f"{metrics['normal_error_deg_before']:.1f} -> "
                  f"{metrics['normal_error_deg_after']:.1f} deg")
    print(f"PoseScore on {len(eval_data)} held-out poses: before "
          f"{metrics['posescore_before']:.4f} -> after {metrics['posescore_after']:.4f}"
          f"{scale}, better on {metrics['improved']} of {len(eval_data)}{judges} ({path})")
    return metrics


def module_devices(**modules: nn.Module | None) -> dict[str, str]:
    """Where each named module's tensors are (``metrics.json``: ``devices``); None skipped."""
    return {name: ", ".join(map(str, devices_of(module)))
            for name, module in modules.items() if module is not None}


def _write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    tmp.replace(path)
