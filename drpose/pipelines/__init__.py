"""drpose.pipelines: image -> multi-view normal and colour images (PSHuman's conditioning)."""

from drpose.pipelines.multiview import MultiViewCondition, MultiViewOutput, MultiViewPipeline

__all__ = ["MultiViewCondition", "MultiViewOutput", "MultiViewPipeline"]
