"""``MultiViewUNet``: PSHuman's multi-view UNet as a diffusers model.

A stock diffusers ``UNet2DConditionModel`` (SD 2.1 unCLIP family: projection class embedding of
the CLIP image embedding added to the time embedding) whose transformer blocks are
:class:`~drpose.models.attention_processors.MultiViewTransformerBlock`: joint normal/colour
self-attention, row-wise attention across the body views, cross-attention. Its state dict is
PSHuman's (``../shared/reference/pshuman_unet_state_dict.tsv``: the 690 stock keys plus
``norm_mv``/``attn_mv`` in each transformer block), so their checkpoint loads strictly.

Forward (as PSHuman's pipeline calls it)::

    sample                (N, in_channels, h, w)  [noisy latent (4) | image latent (4) | SMPL-X (4)]
    timestep              0-d or (N,) int
    encoder_hidden_states (N, S, cross_attention_dim)   per-row prompt embedding (domain, view)
    class_labels          (N, projection_class_embeddings_input_dim)   CLIP embedding + noise level
    -> (N, out_channels, h, w)

N is ``[normal | colour]`` halves of objects x views (see attention_processors). Unlike PSHuman,
a NaN/Inf output raises ``FloatingPointError`` instead of calling ``exit()``.
"""

from __future__ import annotations

import functools
import inspect
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.utils.checkpoint
from diffusers import UNet2DConditionModel
from diffusers.configuration_utils import FrozenDict, register_to_config
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from drpose.models import configs
from drpose.models.attention_processors import MultiViewTransformerBlock, ViewLayout

WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.fp16.safetensors.index.json",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
)
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
# Keywords of PSHuman's UNetMV2DConditionModel.forward beyond diffusers' (see
# ../shared/reference/pshuman_scheduler_and_pipeline.json, unet_forward_signature), with the one
# value each takes in PSHuman's released model, where it changes nothing.
PSHUMAN_NO_OP_KWARGS: dict[str, Any] = {"dino_feature": None, "vis_max_min": False}


class MultiViewUNet(UNet2DConditionModel):
    """PSHuman-compatible multi-view UNet (see the module docstring).

    Constructor arguments are diffusers ``UNet2DConditionModel``'s (PSHuman's values by default;
    ``attention_head_dim`` is, as in SD 2.1, the number of heads per level) plus:

    Args:
        num_body_views: views per object in the row-wise attention (PSHuman: 6).
        face_view: each object has one more, last, view: the face crop (PSHuman: True).
        face_fusion: PSHuman's fusion of the face view into the front view (needs ``face_view``).
        joint_domain_attention: rows are [normal | colour] and ``attn1`` attends across the two
            domains of one view (PSHuman's ``mvcd_attention``: True).
        prediction_type: what the network predicts ("epsilon" | "v_prediction" | "sample"), as
            read from the checkpoint's scheduler config; None when unknown (random init).
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int = configs.PSHUMAN["sample_size"],
        in_channels: int = configs.PSHUMAN["in_channels"],
        out_channels: int = configs.PSHUMAN["out_channels"],
        down_block_types: Sequence[str] = configs.PSHUMAN["down_block_types"],
        mid_block_type: str = configs.PSHUMAN["mid_block_type"],
        up_block_types: Sequence[str] = configs.PSHUMAN["up_block_types"],
        block_out_channels: Sequence[int] = configs.PSHUMAN["block_out_channels"],
        layers_per_block: int = configs.PSHUMAN["layers_per_block"],
        attention_head_dim: int | Sequence[int] = configs.PSHUMAN["attention_head_dim"],
        cross_attention_dim: int = configs.PSHUMAN["cross_attention_dim"],
        norm_num_groups: int = configs.PSHUMAN["norm_num_groups"],
        norm_eps: float = configs.PSHUMAN["norm_eps"],
        act_fn: str = configs.PSHUMAN["act_fn"],
        flip_sin_to_cos: bool = configs.PSHUMAN["flip_sin_to_cos"],
        freq_shift: int = configs.PSHUMAN["freq_shift"],
        downsample_padding: int = configs.PSHUMAN["downsample_padding"],
        mid_block_scale_factor: float = configs.PSHUMAN["mid_block_scale_factor"],
        use_linear_projection: bool = configs.PSHUMAN["use_linear_projection"],
        upcast_attention: bool = configs.PSHUMAN["upcast_attention"],
        class_embed_type: str | None = configs.PSHUMAN["class_embed_type"],
        projection_class_embeddings_input_dim: int | None = configs.PSHUMAN[
            "projection_class_embeddings_input_dim"
        ],
        resnet_time_scale_shift: str = configs.PSHUMAN["resnet_time_scale_shift"],
        num_body_views: int = configs.PSHUMAN["num_body_views"],
        face_view: bool = configs.PSHUMAN["face_view"],
        face_fusion: bool = configs.PSHUMAN["face_fusion"],
        joint_domain_attention: bool = configs.PSHUMAN["joint_domain_attention"],
        prediction_type: str | None = configs.PSHUMAN["prediction_type"],
    ) -> None:
        if face_fusion and not face_view:
            raise ValueError("MultiViewUNet: face_fusion=True needs face_view=True")
        if num_body_views < 1:
            raise ValueError(f"MultiViewUNet: num_body_views must be >= 1, got {num_body_views}")
        if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"MultiViewUNet: prediction_type must be one of {PREDICTION_TYPES} or None, got "
                f"{prediction_type!r}"
            )
        # The parent's undecorated __init__: our own config (above) is the one that is saved.
        UNet2DConditionModel.__init__.__wrapped__(
            self,
            sample_size=sample_size,
            in_channels=in_channels,
            out_channels=out_channels,
            down_block_types=tuple(down_block_types),
            mid_block_type=mid_block_type,
            up_block_types=tuple(up_block_types),
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            attention_head_dim=_tuple_or_int(attention_head_dim),
            cross_attention_dim=cross_attention_dim,
            norm_num_groups=norm_num_groups,
            norm_eps=norm_eps,
            act_fn=act_fn,
            flip_sin_to_cos=flip_sin_to_cos,
            freq_shift=freq_shift,
            downsample_padding=downsample_padding,
            mid_block_scale_factor=mid_block_scale_factor,
            use_linear_projection=use_linear_projection,
            upcast_attention=upcast_attention,
            class_embed_type=class_embed_type,
            projection_class_embeddings_input_dim=projection_class_embeddings_input_dim,
            resnet_time_scale_shift=resnet_time_scale_shift,
        )
        self.layout = ViewLayout(num_body_views, face_view, face_fusion, joint_domain_attention)
        self.check_finite = True
        transformers = [m for m in self.modules() if isinstance(m, Transformer2DModel)]
        for transformer in transformers:
            transformer.transformer_blocks = nn.ModuleList(
                MultiViewTransformerBlock(block, self.layout)
                for block in transformer.transformer_blocks
            )

    @property
    def config(self) -> FrozenDict:
        """Our saved config plus the parent's defaults for the options we do not expose (its
        forward reads some of them, e.g. ``center_input_sample``); only ours are saved."""
        return FrozenDict({**_parent_defaults(), **self._internal_dict})

    @property
    def views_per_object(self) -> int:
        """Views per object and domain: body views (+1 face view)."""
        return self.layout.views_per_object

    def forward(
        self,
        sample: Tensor,
        timestep: Tensor | float | int,
        encoder_hidden_states: Tensor,
        class_labels: Tensor | None = None,
        *,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> UNet2DConditionOutput | tuple[Tensor]:
        """See the module docstring for shapes.

        ``kwargs``: ``UNet2DConditionModel``'s (``cross_attention_kwargs``, ``attention_mask``,
        ...) and those PSHuman's pipeline passes to its own UNet that do nothing in its released
        model (:data:`PSHUMAN_NO_OP_KWARGS`: ``dino_feature=None``, ``vis_max_min=False``); any
        other value of those, or an unknown keyword, raises ``TypeError`` naming it.

        Raises:
            FloatingPointError: the output holds NaN or Inf (when ``self.check_finite``).
        """
        kwargs = _stock_forward_kwargs(kwargs)
        if sample.shape[1] != self.config.in_channels:
            raise ValueError(
                f"MultiViewUNet: sample must have in_channels = {self.config.in_channels} channels "
                "(noisy latent | image latent [| SMPL-X latent]), got shape "
                f"{tuple(sample.shape)}"
            )
        out = super().forward(
            sample,
            timestep,
            encoder_hidden_states,
            class_labels=class_labels,
            return_dict=False,
            **kwargs,
        )[0]
        if self.check_finite and not bool(torch.isfinite(out).all()):
            raise FloatingPointError(
                "MultiViewUNet produced NaN/Inf. With float16 weights this is usually an overflow: "
                "run in bfloat16 or float32; otherwise check the inputs and the learning rate."
            )
        return UNet2DConditionOutput(sample=out) if return_dict else (out,)

    def enable_gradient_checkpointing(self, gradient_checkpointing_func: Any = None) -> None:
        """Checkpoint every ResNet and transformer block while gradients are enabled, always
        non-reentrant (``use_reentrant=False``): with reentrant checkpointing, parameters inside
        a block (LoRA) get no gradient when the block's input does not require one."""
        super().enable_gradient_checkpointing(gradient_checkpointing_func or _checkpoint)

    def save_pshuman(self, path: str | Path) -> None:
        """Write ``path/unet/`` in PSHuman's format: its ``config.json`` and the weights
        (``diffusion_pytorch_model.safetensors``); :meth:`from_pshuman` reads it back."""
        unet_dir = Path(path) / "unet"
        unet_dir.mkdir(parents=True, exist_ok=True)
        config = configs.to_pshuman_config(dict(self._internal_dict))
        (unet_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        state_dict = {name: t.detach().contiguous() for name, t in self.state_dict().items()}
        save_file(state_dict, unet_dir / "diffusion_pytorch_model.safetensors")

    def set_row_attention_backend(self, backend: str) -> None:
        """Backend of :func:`drpose.ops.row_attention` in every ``attn_mv``
        ("auto" | "torch" | "cpu" | "triton")."""
        for module in self.modules():
            if isinstance(module, MultiViewTransformerBlock):
                module.attn_mv.processor.backend = backend

    @classmethod
    def tiny(cls, **overrides: Any) -> MultiViewUNet:
        """A few-million-parameter model of the same family (:data:`configs.TINY`)."""
        return cls(**{**configs.TINY, **overrides})

    @classmethod
    def from_pshuman_config(cls, config: dict[str, Any], **overrides: Any) -> MultiViewUNet:
        """Build (random init) from the contents of PSHuman's ``unet/config.json``.

        ``overrides`` replace translated values (e.g. ``prediction_type``)."""
        return cls(**{**configs.from_pshuman_config(config), **overrides})

    @classmethod
    def from_pshuman(
        cls,
        path: str | Path,
        *,
        torch_dtype: torch.dtype | str = torch.float32,
        prediction_type: str | None = None,
    ) -> MultiViewUNet:
        """Build and load a local copy of PSHuman's UNet, strictly.

        Args:
            path: any of the folders a user has (:func:`find_pshuman_unet`): the downloaded
                PSHuman checkpoint repository (``unet/`` and ``scheduler/`` inside), its ``unet/``
                folder alone (``config.json`` + weights: safetensors, sharded safetensors or
                ``.bin``, float16 or float32), or a Hugging Face cache folder of the repository
                (``snapshots/<revision>/``).
            torch_dtype: the dtype of the loaded weights (a ``torch.dtype`` or its name, e.g.
                ``"bfloat16"``); float32 by default whatever the file holds (PSHuman's release is
                float16), as diffusers' ``from_pretrained``.
            prediction_type: only used when no scheduler config is found (beside ``unet/``);
                otherwise it is read from ``scheduler/scheduler_config.json`` and must agree.
                Neither: PSHuman's scheduler (:data:`configs.PSHUMAN_SCHEDULER`,
                ``v_prediction``) with a warning saying so.

        Raises:
            FileNotFoundError: no UNet config or weights (the message lists what was looked for).
            ValueError: missing, unexpected or mis-shaped weights (all listed); a contradicting
                ``prediction_type``.
        """
        dtype = as_dtype(torch_dtype)
        unet_dir = find_pshuman_unet(path)
        config = json.loads((unet_dir / "config.json").read_text())
        prediction_type = read_prediction_type(unet_dir.parent, prediction_type)
        state_dict = load_weights(unet_dir)
        for name, tensor in state_dict.items():  # one tensor at a time: no second full copy
            state_dict[name] = tensor.to(dtype)
        with torch.device("meta"):
            model = cls.from_pshuman_config(config, prediction_type=prediction_type)
        check_state_dict(model, state_dict, source=str(unet_dir))
        model.load_state_dict(state_dict, strict=True, assign=True)
        return model.eval()


def _checkpoint(module: nn.Module, *args: Any) -> Any:
    return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False)


@functools.cache
def _parent_defaults() -> dict[str, Any]:
    """``UNet2DConditionModel``'s constructor defaults (what we pass for options we lack)."""
    parameters = inspect.signature(UNet2DConditionModel.__init__.__wrapped__).parameters
    return {name: p.default for name, p in parameters.items() if name != "self"}


@functools.cache
def _stock_forward_names() -> frozenset[str]:
    parameters = inspect.signature(UNet2DConditionModel.forward).parameters
    return frozenset(parameters) - {"self", "sample", "timestep", "encoder_hidden_states"}


def _stock_forward_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` without PSHuman's no-op keywords; TypeError for any other use of them or for
    a keyword neither diffusers' UNet nor PSHuman's takes."""
    stock = {}
    for name, value in kwargs.items():
        if name in PSHUMAN_NO_OP_KWARGS:
            if value is not PSHUMAN_NO_OP_KWARGS[name]:
                raise TypeError(
                    f"MultiViewUNet.forward: {name}={_short(value)} is not supported: PSHuman's "
                    f"released model only uses {name}={PSHUMAN_NO_OP_KWARGS[name]!r} (DINO "
                    "features and max/min recording belong to variants it does not ship); drop "
                    "the argument"
                )
        elif name in _stock_forward_names():
            stock[name] = value
        else:
            raise TypeError(
                f"MultiViewUNet.forward got an unexpected keyword argument {name!r}; it takes "
                f"{sorted(_stock_forward_names() | set(PSHUMAN_NO_OP_KWARGS))}"
            )
    return stock


def _short(value: Any) -> str:
    return f"<Tensor {tuple(value.shape)}>" if isinstance(value, Tensor) else repr(value)


def _tuple_or_int(value: int | Sequence[int]) -> int | tuple[int, ...]:
    return value if isinstance(value, int) else tuple(value)


def as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A floating ``torch.dtype`` from itself or its name ("float16", "bf16", "fp32", ...)."""
    if isinstance(dtype, str):
        names = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32",
                 "float": "float32"}
        name = names.get(dtype.lower(), dtype.lower())
        dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"torch_dtype must be a floating torch dtype (e.g. torch.bfloat16 or "
                         f"'bfloat16'), got {dtype!r}")
    return dtype


def find_pshuman_unet(path: str | Path) -> Path:
    """The folder holding PSHuman's UNet ``config.json`` among the folders a user has: ``path``
    itself (the ``unet/`` folder), ``path/unet`` (the checkpoint repository) or, for a Hugging Face
    cache folder (``models--pengHTYX--PSHuman_Unclip_768_6views``), ``unet/`` of its only (or
    ``refs/main``) snapshot.

    Raises:
        FileNotFoundError: none of them has a ``config.json`` (all candidates are listed).
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"MultiViewUNet.from_pshuman: {root} is not a folder")
    candidates = [root, root / "unet"]
    snapshots = root / "snapshots"
    if snapshots.is_dir():
        ref = root / "refs" / "main"
        revisions = ([snapshots / ref.read_text().strip()] if ref.is_file()
                     else sorted(p for p in snapshots.iterdir() if p.is_dir()))
        if len(revisions) == 1:
            candidates.append(revisions[0] / "unet")
    for folder in candidates:
        config_path = folder / "config.json"
        if config_path.is_file() and "cross_attention_dim" in json.loads(config_path.read_text()):
            return folder
    looked = ", ".join(str(folder / "config.json") for folder in candidates)
    raise FileNotFoundError(
        f"MultiViewUNet.from_pshuman: no UNet config in {root} (looked for {looked}); pass "
        "PSHuman's checkpoint folder (with unet/) or its unet/ folder"
    )


def read_prediction_type(root: Path, given: str | None = None) -> str:
    """``prediction_type`` from ``root/scheduler/scheduler_config.json``; ``given`` must agree
    with that file when it exists. Without the file: ``given``, else PSHuman's scheduler's
    (:data:`configs.PSHUMAN_SCHEDULER`), with a warning saying so."""
    path = root / "scheduler" / "scheduler_config.json"
    if path.is_file():
        scheduler_config = json.loads(path.read_text())
        found = scheduler_config.get("prediction_type")
        if found is None:
            raise ValueError(
                f"{path} has no prediction_type; PSHuman's code does not determine it: add it to "
                f"the file (one of {PREDICTION_TYPES})"
            )
        if given is not None and given != found:
            raise ValueError(f"prediction_type={given!r} contradicts {path} ({found!r})")
        prediction_type = found
    elif given is not None:
        prediction_type = given
    else:
        prediction_type = configs.PSHUMAN_SCHEDULER["prediction_type"]
        warnings.warn(
            f"no {path}: using PSHuman's scheduler as reconstructed from its code "
            f"(drpose.models.configs.PSHUMAN_SCHEDULER, prediction_type={prediction_type!r}: "
            "SD 2.1 unCLIP's scheduler with linear betas); copy the checkpoint's scheduler/ "
            "folder or pass prediction_type= if the checkpoint predicts something else",
            UserWarning,
            stacklevel=3,
        )
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}"
        )
    return prediction_type


def load_weights(unet_dir: Path) -> dict[str, Tensor]:
    """The state dict stored in ``unet_dir`` (first of :data:`WEIGHT_FILES` that exists)."""
    for name in WEIGHT_FILES:
        path = unet_dir / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
            state_dict: dict[str, Tensor] = {}
            for shard in shards:
                state_dict.update(load_file(unet_dir / shard))
            return state_dict
        if name.endswith(".safetensors"):
            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"no UNet weights in {unet_dir}; looked for {list(WEIGHT_FILES)}")


def check_state_dict(model: nn.Module, state_dict: dict[str, Tensor], source: str) -> None:
    """Raise ValueError listing every missing, unexpected and mis-shaped key."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    misshaped = sorted(
        f"{name}: file {tuple(state_dict[name].shape)} vs model {shape}"
        for name, shape in expected.items()
        if name in state_dict and tuple(state_dict[name].shape) != shape
    )
    if missing or unexpected or misshaped:
        parts = [f"{source} does not match MultiViewUNet's state dict"]
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", misshaped)):
            if keys:
                parts.append(f"{len(keys)} {label}: " + ", ".join(keys))
        raise ValueError("; ".join(parts))
