"""Roofline on paper: FLOPs, bytes moved and predicted time of each fused op at PSHuman's shapes.

``python bench/roofline.py`` prints the README's table. Every number is derived here from the
shapes and the per-element operation counts below; time = max(FLOPs / peak compute, bytes / peak
bandwidth) (a kernel can do no better; launch latency and caches are ignored), and the bound is
whichever term is larger. Peaks: H100 SXM 3.35 TB/s, 989 TFLOP/s bf16 dense (tensor cores),
67 TFLOP/s fp32; H200 4.8 TB/s with the same compute.

Counts (an FMA = 2 FLOPs, a division = 1):
* heatmap loss (bce, fp32 maths, csrc/pose_heatmap_loss_math.h): exp_nonpositive 20, log1p and
  reciprocal 17, the rest of pixel_terms 5, target t = gx gy 1, the sum 1: 44 per pixel forward;
  +1 (c df/dz) +6 (keypoint sums) with the gradient. Fused bytes: the logits read once (+ the
  gradient written once). Torch path (pose_heatmap_loss_reference, eager): one kernel per
  operation, each reading and writing fp32 maps: target (w), clamp (r w), z t (2r w), minus
  (2r w), abs, neg, exp, log1p (r w each), plus (2r w), sum (r) = 21 map passes of 4 bytes; with
  autograd's backward, 13 more passes (the derivative of each of those operations).
* row attention (bf16, head dim 64): for each image row, the 6 views' tokens of that row attend
  to each other: S = groups x rows sequences of L = 6 x width tokens; forward 4 S h L^2 D FLOPs,
  backward 2.5x the forward. Groups = batch 2 x (normal, colour) = 4. Fused bytes: q, k, v, o
  (and dq, dk, dv, do in the backward) once; torch path (materialised attention): also the
  S h L^2 score matrix written, softmaxed (read, write) and read, in bf16.
* rasterize (fp64 maths, csrc/rasterize_math.h): setup ~90 FLOPs per triangle and view; ~40 per
  fragment tested (shade) in each of the 2 passes, and once more per covered pixel (resolve).
  Bytes: the setup (152 B) written once and read by 2 passes, 8-byte atomicMin + 12 B per
  fragment, 28 B per pixel (key, id, output) and 16 B per pixel of zero fill. Fragments =
  covered pixels x depth complexity 2 (front and back of the body), covered = 25% of the image
  (the stand-in body in PSHuman's orthographic views covers 20-30%). Torch path: the reference's
  brute force, every pixel against every triangle (3 edge functions, S, Z, W ~ 30 FLOPs in
  fp64 and ~10 map passes of 8 bytes per (pixel, triangle)), fp64 at 67 TFLOP/s (H100 tensor).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Machine:
    name: str
    bandwidth: float  # bytes / s
    bf16: float  # FLOP / s
    fp32: float


H100 = Machine("H100 SXM", 3.35e12, 989e12, 67e12)
H200 = Machine("H200", 4.8e12, 989e12, 67e12)


@dataclass(frozen=True)
class Row:
    op: str
    shape: str
    path: str
    flops: float
    bytes: float
    precision: str  # "fp32" | "bf16": which peak the FLOPs run at

    def time(self, m: Machine) -> tuple[float, str]:
        peak = m.bf16 if self.precision == "bf16" else m.fp32
        compute, memory = self.flops / peak, self.bytes / m.bandwidth
        return max(compute, memory), "compute" if compute > memory else "memory"


def heatmap_rows() -> list[Row]:
    rows = []
    maps = 2 * 6 * 23
    for size in (96, 192):
        p = maps * size * size
        shape = f"B2 V6 J23 {size}²"
        rows += [Row("heatmap loss fwd", shape, "fused", 44 * p, 4 * p, "fp32"),
                 Row("heatmap loss fwd", shape, "torch", 44 * p, 21 * 4 * p, "fp32"),
                 Row("heatmap loss fwd+grad", shape, "fused", 51 * p, 8 * p, "fp32"),
                 Row("heatmap loss fwd+grad", shape, "torch", 2 * 51 * p, 34 * 4 * p, "fp32")]
    return rows


# PSHuman's attention levels: (latent side, channels, heads, transformer blocks at that side)
LEVELS = ((96, 320, 5, 5), (48, 640, 10, 5), (24, 1280, 20, 5), (12, 1280, 20, 1))


def attention_rows(groups: int = 4, views: int = 6, head_dim: int = 64) -> list[Row]:
    rows = []
    for side, channels, heads, blocks in LEVELS:
        assert channels == heads * head_dim
        s, length = groups * side, views * side
        flops = 4 * s * heads * length**2 * head_dim * blocks
        qkvo = 4 * s * heads * length * head_dim * 2 * blocks
        scores = 4 * s * heads * length**2 * 2 * blocks
        shape = f"{side}² x{blocks} ({heads} heads, L={length})"
        rows += [Row("row attention fwd", shape, "fused", flops, qkvo, "bf16"),
                 Row("row attention fwd", shape, "torch", flops, qkvo + scores, "bf16"),
                 Row("row attention bwd", shape, "fused", 2.5 * flops, 2 * qkvo, "bf16"),
                 Row("row attention bwd", shape, "torch", 2.5 * flops, 2 * (qkvo + scores),
                     "bf16")]
    return rows


def rasterize_rows(views: int = 6, side: int = 768, triangles: int = 20_908,
                   coverage: float = 0.25, depth_complexity: float = 2.0) -> list[Row]:
    pixels = views * side * side
    covered = coverage * pixels
    fragments = depth_complexity * covered
    pairs = views * triangles
    flops = 90 * pairs + 2 * 40 * fragments + 40 * covered
    moved = 152 * 3 * pairs + 20 * fragments + (28 + 16) * pixels
    brute = pixels * triangles
    shape = f"{views} x {side}², {triangles} tris"
    # fp64 maths: at the fp32 peak on H100/H200 (fp64 tensor peak = 67 TFLOP/s)
    return [Row("rasterize fwd", shape, "cuda", flops, moved, "fp32"),
            Row("rasterize fwd", shape, "torch (brute force)", 30 * brute, 10 * 8 * brute,
                "fp32")]


def rows() -> list[Row]:
    return heatmap_rows() + attention_rows() + rasterize_rows()


def markdown() -> str:
    lines = ["| op | shape | path | GFLOP | MB moved | FLOP/B | H100 µs | bound | H200 µs "
             "| bound |", "|---|---|---|---:|---:|---:|---:|---|---:|---|"]
    for r in rows():
        t100, b100 = r.time(H100)
        t200, b200 = r.time(H200)
        lines.append(f"| {r.op} | {r.shape} | {r.path} | {r.flops / 1e9:.3g} | "
                     f"{r.bytes / 1e6:.4g} | {r.flops / r.bytes:.3g} | {t100 * 1e6:.4g} | {b100} | "
                     f"{t200 * 1e6:.4g} | {b200} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
