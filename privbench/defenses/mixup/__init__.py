"""Mixup-Privacy (Kim, Dolz, Jodoin, Desrosiers; IPMI 2023) and its study, in one package.

- :mod:`~privbench.defenses.mixup.defense`: the defense, its key and its config (registered here);
- :mod:`~privbench.defenses.mixup.study`: the utility study (variants, Dice-versus-K, test-retest);
- :mod:`~privbench.defenses.mixup.curve`: the utility-privacy curve over the mixing weight a;
- :mod:`~privbench.defenses.mixup.plots`: their figures.
"""

from privbench.defenses.mixup.defense import UNMIXINGS, MixupConfig, MixupKey, MixupPrivacy

__all__ = ["UNMIXINGS", "MixupConfig", "MixupKey", "MixupPrivacy"]
