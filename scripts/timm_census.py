"""Which of timm's pretrained ViT architectures load in vit_jax, exactly.

For every architecture of vit_jax/models/timm_architectures.json (every one
with a pretrained tag in timm's ViT modules), timm builds the model with one
block and random weights, writes it with its own `save_for_hf` (config.json
+ model.safetensors), and vit_jax loads that directory through
`vit_jax.weights.pretrained.load`. Both classify the same random image at
the checkpoint's input size; an architecture loads when the outputs (logits,
or the pooled features where timm's default head is empty) agree to 1e-4
relative. Every other architecture must be refused in one line that names
the feature. With --round_trip, each model that loads is also written back
(`vit_jax.weights.save_timm`) and timm's `create_model('local-dir:...')` of
that directory must give timm's first outputs to 1e-4 (or be refused in one
line). Needs torch and timm (the `benchmark` extra):

  .venv/bin/python scripts/timm_census.py [--only=REGEX] [--round_trip]
      [--json_out=FILE]

Prints one line per architecture and the refusals grouped by reason.
"""

import argparse
import collections
import json
import pathlib
import re
import sys
import tempfile
import time
import traceback
from typing import Any, Dict

import numpy as np

TABLE = (pathlib.Path(__file__).resolve().parents[1] / 'vit_jax' / 'models' /
         'timm_architectures.json')
TOLERANCE = 1e-4


def _randomise(model, seed: int) -> None:
  """Random parameters of a sensible scale (buffers such as RoPE tables
  stay timm's): weights ~ N(0, 1/fan_in), norm scales ~ 1 + N(0, 0.1^2),
  everything else ~ N(0, 0.1^2)."""
  import torch  # pylint: disable=g-import-not-at-top
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, parameter in model.named_parameters():
      noise = torch.randn(parameter.shape, generator=generator)
      if parameter.ndim >= 2 and 'token' not in name and (
          'pos_embed' not in name) and 'latent' not in name:
        fan_in = int(np.prod(parameter.shape[1:]))
        parameter.copy_(noise / np.sqrt(fan_in))
      elif parameter.ndim == 1 and name.endswith(('weight', 'gamma')):
        parameter.copy_(1 + 0.1 * noise)
      else:
        parameter.copy_(0.1 * noise)


def _timm_directory(architecture: str, entry: Dict[str, Any],
                    directory: pathlib.Path):
  """timm's one-block model of `architecture`, saved by timm into
  `directory`; returns (model, input size (C, H, W), mean, std)."""
  import timm  # pylint: disable=g-import-not-at-top
  import timm_table  # pylint: disable=g-import-not-at-top
  # The model the listing's recorded state dicts are of.
  model, model_args = timm_table.one_block_model(architecture,
                                                 entry['model_args'])
  model.eval()
  _randomise(model, seed=0)
  timm.models.save_for_hf(model, str(directory), model_args=model_args,
                          safe_serialization=True)
  config = model.pretrained_cfg
  return model, tuple(config['input_size']), config['mean'], config['std']


def _relative_error(ours: np.ndarray, expected: np.ndarray) -> float:
  return float(np.max(np.abs(ours - expected)) / np.max(np.abs(expected)))


def _known_refusal(error: Exception) -> Dict[str, Any]:
  """A ValueError is a refusal (its first line); anything else a crash."""
  message = str(error).splitlines()[0] if str(error) else repr(error)
  if isinstance(error, ValueError):
    return {'result': 'refused', 'reason': message}
  return {'result': 'crashed', 'reason': (
      f'{type(error).__name__}: {message} | ' +
      traceback.format_exc(limit=-2).replace('\n', ' '))}


def _back_to_timm(loaded, images: np.ndarray,
                  expected: np.ndarray) -> Dict[str, Any]:
  """Writes the loaded model back as a timm directory; timm's outputs of it
  against timm's outputs of the original."""
  import timm  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from vit_jax import weights  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as directory:
    try:
      weights.save_timm(loaded.params, loaded.model, directory,
                        image_size=images.shape[1:3],
                        preprocessing=loaded.preprocessing)
    except Exception as error:  # pylint: disable=broad-except
      return _known_refusal(error)
    try:  # timm failing on what we wrote is our error.
      model = timm.create_model('local-dir:' + directory,
                                pretrained=True).eval()
      with torch.no_grad():
        back = model(torch.from_numpy(
            images.transpose(0, 3, 1, 2).astype(np.float32))).numpy()
    except Exception as error:  # pylint: disable=broad-except
      return {'result': 'wrong', 'reason': f'timm: {error!r}'[:300]}
  if back.shape != expected.shape:
    return {'result': 'wrong', 'reason': f'output shape {back.shape}, timm '
            f'{expected.shape}'}
  error = _relative_error(back, expected)
  return {'result': 'same' if error <= TOLERANCE else 'wrong',
          'relative_error': error}


def _compare(architecture: str, entry: Dict[str, Any],
             round_trip: bool = False) -> Dict[str, Any]:
  import torch  # pylint: disable=g-import-not-at-top
  from vit_jax.weights import pretrained  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as directory:
    model, input_size, mean, std = _timm_directory(
        architecture, entry, pathlib.Path(directory))
    _, height, width = input_size
    pixels = np.random.default_rng(0).integers(
        0, 256, (2, height, width, 3)).astype(np.float32)
    images = (pixels / 255 - np.asarray(mean)) / np.asarray(std)
    with torch.no_grad():
      expected = model(torch.from_numpy(
          images.transpose(0, 3, 1, 2).astype(np.float32))).numpy()
    try:
      loaded = pretrained.load(directory)
    except Exception as error:  # pylint: disable=broad-except
      return _known_refusal(error)
  ours_mean = np.asarray(loaded.preprocessing.mean, np.float32)
  ours_std = np.asarray(loaded.preprocessing.std, np.float32)
  ours = np.asarray(loaded.model.apply(
      {'params': loaded.params}, (pixels - ours_mean) / ours_std))
  if ours.shape != expected.shape:
    return {'result': 'wrong', 'reason': f'output shape {ours.shape}, timm '
            f'{expected.shape}'}
  error = _relative_error(ours, expected)
  result = {'result': 'loads' if error <= TOLERANCE else 'wrong',
            'relative_error': error}
  if round_trip and result['result'] == 'loads':
    result['back'] = _back_to_timm(loaded, images, expected)
  return result


def _reason_group(reason: str) -> str:
  """A refusal's feature, for grouping: the message without its names."""
  return re.sub(r"'[^']*'|\([^)]*\)|\d+", '…', reason)[:110]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--only', default='', help='re.search on the names')
  parser.add_argument('--round_trip', action='store_true',
                      help='also write each loaded model back to timm')
  parser.add_argument('--json_out', default=None)
  args = parser.parse_args(argv)
  entries = json.loads(TABLE.read_text())['architectures']
  names = [name for name in sorted(entries) if re.search(args.only, name)]
  results = {}
  for name in names:
    start = time.time()
    try:
      results[name] = _compare(name, entries[name], args.round_trip)
    except Exception as error:  # pylint: disable=broad-except
      results[name] = {'result': 'timm failed', 'reason': repr(error)[:300]}
    results[name]['seconds'] = round(time.time() - start, 1)
    print(f'{name}: {json.dumps(results[name])}', flush=True)
  counts = collections.Counter(result['result'] for result in results.values())
  print(f'\n{counts["loads"]} of {len(names)} load; ' + ', '.join(
      f'{count} {kind}' for kind, count in sorted(counts.items())
      if kind != 'loads'))
  backs = collections.Counter(result['back']['result']
                              for result in results.values()
                              if 'back' in result)
  if backs:
    print(f'back to timm: {backs["same"]} of {sum(backs.values())} give '
          "timm's outputs; " + ', '.join(
              f'{count} {kind}' for kind, count in sorted(backs.items())
              if kind != 'same'))
  groups = collections.defaultdict(list)
  for name, result in results.items():
    if result['result'] != 'loads':
      groups[(result['result'], _reason_group(result.get('reason', '')))
             ].append(name)
    back = result.get('back', {})
    if back.get('result', 'same') != 'same':
      groups[('back ' + back['result'], _reason_group(back.get('reason', '')))
             ].append(name)
  for (kind, reason), members in sorted(groups.items(),
                                        key=lambda item: -len(item[1])):
    print(f'{len(members):4d} {kind}: {reason}\n       {" ".join(members)}')
  if args.json_out:
    pathlib.Path(args.json_out).write_text(json.dumps(results, indent=1))
  failures = (counts['wrong'] + counts['crashed'] + backs['wrong'] +
              backs['crashed'])
  return 0 if not failures else 1


if __name__ == '__main__':
  sys.exit(main())
