"""bioplaus.rules — learning rules, one file each, all behind `LearningRule.assign_credit`.

Rules are selected by Hydra's `_target_` (configs/rule/*.yaml); a user's rule is any importable
subclass of `bioplaus.rules.base.LearningRule`. There is no registry.
"""
from bioplaus.rules.base import LearningRule

__all__ = ["LearningRule"]
