"""drpose.pipelines: image -> multi-view normal and colour images (PSHuman's conditioning)."""

from drpose.pipelines.multiview import (
    ImageEncodings,
    MultiViewCondition,
    MultiViewOutput,
    MultiViewPipeline,
)

__all__ = ["ImageEncodings", "MultiViewCondition", "MultiViewOutput", "MultiViewPipeline"]
