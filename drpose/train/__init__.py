"""Training: the shared machinery (:mod:`drpose.train.engine`), the stages before the reward loop,
and DrPose reward fine-tuning (:mod:`drpose.train.reward`), run by ``python -m drpose.train``."""
