"""timm names as checkpoint sources.

A timm name is what `timm.create_model` takes: an architecture and a
pretrained tag (`vit_base_patch16_224.augreg2_in21k_ft_in1k`), with or
without `timm/` before it; a bare architecture means timm's default tag.
`hub_source` turns one into the 'hf-hub:' id of its weights (the tag's
`hf_hub_id` in timm's table, `vit_jax.models.timm_definitions`), which
`timm_hub` fetches through the Hugging Face cache like any other id:

  weights.load('vit_base_patch16_224.augreg2_in21k_ft_in1k')
  # = weights.load('hf-hub:timm/vit_base_patch16_224.augreg2_in21k_ft_in1k')

Which of timm's models load is `timm_listing`'s business.
"""

import re
from typing import Any, Optional, Tuple

from vit_jax.models import timm_definitions
from vit_jax.weights import timm_hub

TIMM_PREFIX = 'timm/'


def split(name: str) -> Tuple[str, Optional[str]]:
  """'timm/ARCH.TAG', 'ARCH.TAG' or 'ARCH' -> (ARCH, TAG or None)."""
  return timm_definitions.split_name(name)


def is_timm_name(source: Any) -> bool:
  """Whether `source` names an architecture of timm's table (its tag is
  checked by `hub_source`, so that a wrong tag gets its own error)."""
  if not isinstance(source, str) or not re.fullmatch(
      r'(timm/)?[a-z0-9_]+(\.[A-Za-z0-9_]+)?', source):
    return False
  return timm_definitions.definition(source) is not None


def hub_source(name: str) -> str:
  """The 'hf-hub:' id of a timm name's weights.

  Raises:
    ValueError: the tag is not one of the architecture's, or its weights
      are not on the Hugging Face hub.
  """
  definition = timm_definitions.definition(name)
  if definition is None:
    raise ValueError(f'{name!r} is no timm architecture of timm '
                     f'{timm_definitions.timm_version()}\'s ViT modules')
  architecture, tag = split(name)
  tag = tag or definition.default_tag
  if tag not in definition.tags:
    raise ValueError(
        f'{architecture} has no pretrained tag {tag!r}: it has '
        f'{", ".join(sorted(definition.tags))}')
  hub_id = definition.tags[tag].get('hf_hub_id')
  if not hub_id:
    raise ValueError(f'{architecture}.{tag} is not on the Hugging Face hub '
                     '(timm fetches it from another URL): download it with '
                     'timm and save it with timm.models.save_for_hf')
  return timm_hub.HF_HUB_PREFIX + hub_id
