"""`benchmarks.benchmark --mode=exported`: an exported file beside JAX.

  run_exported(exported, ...)     images/s of the file in its runtime and of
                                  the JAX model, same batch, same threads,
                                  interleaved (`protocol.time_steps`); with
                                  compare='timm_onnx' also timm's own ONNX
                                  export in ONNX Runtime
  agreement(runner, loaded, split)  top-1 agreement of the file with the
                                  float32 JAX model over a dataset split,
                                  and both accuracies

`exported` is a file (`.onnx`, `.tflite`, a SavedModel directory) or a
kind ('onnx', 'tflite', 'saved_model'): the model (--checkpoint, or
--model with random weights) is then exported into a temporary directory
first, in `precision`. Both sides take uint8 images (B, S, S, 3) at the
model's resolution S: the file as it is served, JAX through the same
serving function, jitted (`serving.serving_function`).
"""

import os
import tempfile
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import numpy as np

from benchmarks import exported_side
from benchmarks import protocol
from vit_jax.data.datasets import fashion_mnist_local
from vit_jax.export import serving
from vit_jax import models
from vit_jax.weights import pretrained

COMPARISONS = ('timm_onnx',)
# The datasets an agreement is measured on (read from their files).
AGREEMENT_DATASETS = ('fashion_mnist_local',)
# Images per call when measuring agreement.
_AGREEMENT_BATCH = 256
# A side: images -> logits.
Runner = Callable[[Any], np.ndarray]


def load_model(checkpoint: Optional[str], model: str, image_size: int,
               num_classes: int) -> pretrained.LoadedModel:
  """The checkpoint's model, or `model` with random weights (for speed
  alone), ready to serve (`serving.for_serving`)."""
  if checkpoint:
    return serving.for_serving(pretrained.load(checkpoint))
  network = models.create_model(model, num_classes=num_classes)
  params = jax.tree_util.tree_map(np.asarray, models.init_params(
      network, jax.random.PRNGKey(0), (image_size, image_size)))
  return serving.for_serving(pretrained.LoadedModel(
      model=network, params=params, image_size=image_size,
      preprocessing=models.Preprocessing(mean=(127.5,) * 3,
                                         std=(127.5,) * 3)))


def _jax_runner(loaded: pretrained.LoadedModel):
  serve = jax.jit(serving.serving_function(loaded))
  params = jax.device_put(loaded.params)
  return lambda images: np.asarray(serve(params, images))


def _check_options(compare: Optional[str], checkpoint: Optional[str],
                   agreement_split: Optional[str], dataset: str) -> None:
  """Raises ValueError for a combination run_exported cannot measure."""
  if compare not in (None, *COMPARISONS):
    raise ValueError(f'unknown --compare={compare!r} for --mode=exported; '
                     'give timm_onnx')
  if compare and checkpoint:
    raise ValueError('--compare=timm_onnx times a named --model with random '
                     'weights: leave --checkpoint out')
  if agreement_split and not checkpoint:
    raise ValueError('--agreement_split needs --checkpoint: agreement is '
                     'measured on a trained model')
  if agreement_split and dataset not in AGREEMENT_DATASETS:
    raise ValueError(f'--dataset={dataset} has no agreement reader: give '
                     + ', '.join(AGREEMENT_DATASETS))


def _file_and_jax(path: str, loaded: pretrained.LoadedModel, batch_size: int,
                  threads: int) -> Tuple[Dict[str, Runner], Dict[str, Any]]:
  """The exported file's runner and the JAX model's, with their common
  input: random uint8 images (B, S, S, 3)."""
  runners = {'exported': exported_side.open_runner(path, threads),
             'jax': _jax_runner(loaded)}
  size = loaded.image_size
  images = np.random.default_rng(0).integers(
      0, 256, (batch_size, size, size, 3), np.uint8)
  return runners, {'exported': images, 'jax': images}


def _add_timm_onnx(runners: Dict[str, Runner], inputs: Dict[str, Any],
                   model: str, loaded: pretrained.LoadedModel,
                   batch_size: int, threads: int, directory: str) -> None:
  """timm's own ONNX export of the `model` variant, as a third side; it
  takes float32 images (B, 3, S, S)."""
  size = loaded.image_size
  timm_path = exported_side.export_timm_onnx(
      models.VARIANTS[model], size, loaded.model.num_classes, directory)
  runners['timm_onnx'] = exported_side.open_runner(timm_path, threads)
  inputs['timm_onnx'] = np.random.default_rng(0).standard_normal(
      (batch_size, 3, size, size)).astype(np.float32)


def _time_sides(runners: Dict[str, Runner], inputs: Dict[str, Any],
                steps: int, warmup: int,
                batch_size: int) -> Dict[str, Dict[str, float]]:
  """Each side's `protocol.summary`, the sides' steps interleaved."""
  names = list(runners)
  times = protocol.time_steps(
      [lambda name=name: runners[name](inputs[name]) for name in names],
      steps, warmup)
  return {name: protocol.summary(step_times, batch_size)
          for name, step_times in zip(names, times)}


def _speed_ratios(result: Dict[str, Any]) -> Dict[str, float]:
  """The exported file's images/s over each other side's."""
  speed = lambda name: result[name]['images_per_sec']
  ratios = {'exported_vs_jax': speed('exported') / speed('jax')}
  if 'timm_onnx' in result:
    ratios['exported_vs_timm_onnx'] = speed('exported') / speed('timm_onnx')
  return ratios


def run_exported(exported: str, *, checkpoint: Optional[str] = None,
                 model: str = 'ViT-B_16', image_size: int = 224,
                 num_classes: int = 10, batch_size: int = 8,
                 precision: str = 'float32', steps: int = 10,
                 warmup: int = 2, threads: Optional[int] = None,
                 compare: Optional[str] = None,
                 agreement_split: Optional[str] = None,
                 dataset: str = 'fashion_mnist_local') -> Dict[str, Any]:
  """Times the exported file beside the JAX model (and timm's ONNX file).

  Args:
    exported: a file or a kind to export now (module docstring).
    checkpoint: the model's source; without it `model` has random weights.
    model, image_size, num_classes: the random model's architecture.
    batch_size: images per call, the same for every side.
    precision: of a file exported now.
    steps, warmup: as `protocol.time_steps`.
    threads: each runtime's threads; default the CPU count.
    compare: 'timm_onnx' or None.
    agreement_split: also measure agreement on this split of `dataset`.
    dataset: one of AGREEMENT_DATASETS.

  Returns:
    The figures: images/s and ms per call of each side, the ratios, and
    with `agreement_split` the agreement and accuracies.

  Raises:
    ValueError: an unknown `compare` or dataset, or an agreement without a
      checkpoint.
  """
  _check_options(compare, checkpoint, agreement_split, dataset)
  threads = threads or os.cpu_count() or 1
  loaded = load_model(checkpoint, model, image_size, num_classes)
  with tempfile.TemporaryDirectory() as directory:
    path = exported
    if exported in exported_side.KINDS:
      path = exported_side.export_random(exported, loaded, directory,
                                         precision)
    runners, inputs = _file_and_jax(path, loaded, batch_size, threads)
    if compare == 'timm_onnx':
      _add_timm_onnx(runners, inputs, model, loaded, batch_size, threads,
                     directory)
    result = {
        'file': exported if path == exported else
                f'{exported} ({precision}, exported now)',
        'runtime': exported_side.runtime_name(path),
        'batch_size': batch_size, 'image_size': loaded.image_size,
        'threads': threads,
        **_time_sides(runners, inputs, steps, warmup, batch_size),
    }
    result.update(_speed_ratios(result))
    if agreement_split:
      result['agreement'] = agreement(runners['exported'], loaded,
                                      agreement_split)
  return result


def agreement(runner, loaded: pretrained.LoadedModel, split: str,
              max_images: Optional[int] = None) -> Dict[str, float]:
  """Top-1 agreement of `runner` (a file) with the float32 JAX model on a
  Fashion-MNIST split (28-px greyscale as RGB, resized by both; its first
  `max_images`, default all), and each one's accuracy against the labels."""
  images, labels = fashion_mnist_local.load_split(
      fashion_mnist_local.source_dir(), split)
  images, labels = images[:max_images], labels[:max_images]
  images = np.repeat(images[..., None], 3, axis=-1)
  ours, reference = [], []
  for start in range(0, len(images), _AGREEMENT_BATCH):
    batch = images[start:start + _AGREEMENT_BATCH]
    ours.append(np.argmax(runner(batch), axis=-1))
    reference.append(np.argmax(
        serving.reference_logits(loaded, batch), axis=-1))
  ours, reference = np.concatenate(ours), np.concatenate(reference)
  return {'split': split, 'images': int(len(labels)),
          'top1_agreement': float(np.mean(ours == reference)),
          'exported_accuracy': float(np.mean(ours == labels)),
          'jax_accuracy': float(np.mean(reference == labels))}


def format_result(result: Dict[str, Any]) -> str:
  """The figures as printed lines."""
  lines = [f"{result['file']} in {result['runtime']}, batch "
           f"{result['batch_size']} @ {result['image_size']}px, "
           f"{result['threads']} threads"]
  for name in ('exported', 'jax', 'timm_onnx'):
    if name in result:
      lines.append(f"  {name}: {result[name]['images_per_sec']:.2f} img/s, "
                   f"{result[name]['step_time_ms']:.1f} ms/call")
  lines.append(f"  exported / jax = {result['exported_vs_jax']:.2f}x")
  if 'exported_vs_timm_onnx' in result:
    lines.append('  exported / timm_onnx = '
                 f"{result['exported_vs_timm_onnx']:.2f}x")
  if 'agreement' in result:
    a = result['agreement']
    lines.append(
        f"  {a['split']} ({a['images']} images): top-1 agreement with JAX "
        f"{a['top1_agreement']:.2%}; accuracy {a['exported_accuracy']:.2%} "
        f"(JAX float32 {a['jax_accuracy']:.2%})")
  return '\n'.join(lines)
