r"""Few-shot linear evaluation of a checkpoint's frozen features (paper 4.1).

Run from the repository root:

  .venv/bin/python -m vit_jax.cli.fewshot --checkpoint=ViT-B_16.npz \
      --dataset=cifar10 \
      [--model=ViT-B_16] [--data_dir=~/tensorflow_datasets] \
      [--train_split=train] [--test_split=test] [--image_size=224] \
      [--shots=1,5,10,25] [--seeds=0,1,2] [--val_per_class=10] \
      [--json_out=fewshot.json] [--features_out=features.npz]

Both splits go through the evaluation transform (resize, no augmentation) of
`vit_jax.data.pipeline`, padded and masked so every example counts once.
The features are the `pre_logits` (the file's head is dropped, so they are
the model's output), extracted on one device by the training loop's few-shot
extractor (`vit_jax.evaluators.linear_fewshot`). The whole training split is
the pool the shots and the l2-validation examples are drawn from; a TFDS
slice such as --train_split='train[:10000]' bounds the extraction cost.
--dataset takes any prepared TFDS image-classification dataset,
`fashion_mnist_local`, or `imagefolder` with --data_dir=ROOT holding
ROOT/<split>/<class>/*.png|jpg; both splits are read from the one source
(an image folder's classes are the training split's).
The protocol (ridge regression to {-1, 1} targets, l2 chosen per seed on
validation examples drawn from the training split) is `vit_jax.evaluators.fewshot_ridge`'s.

Results print one line per shot count and, with --json_out, go to a file
(see `to_json`). --checkpoint takes any source `vit_jax.weights.pretrained.load`
reads; the architecture, resolution and pixel normalisation come from the
file (its arrays and, for our exports such as configs/default.py's
model.npz, its sidecar). --model is optional: given, the file must fit that
variant, with the architecture overrides of its training's `config.model`
(e.g. --model=R+ViT-Ti_16 --patch_size=1 --hidden_size=96 --mlp_dim=192
--num_heads=3 --num_layers=2 --resnet_units=1 for configs/default.py's
model.npz).
"""

from vit_jax.cli import _process

if __name__ == '__main__':
  # Before TensorFlow is imported: keep its banner out of the output.
  _process.quiet_tensorflow()

# pylint: disable=g-import-not-at-top,wrong-import-position
import dataclasses
import json
import os
from typing import Any, Dict, List, Optional, Sequence

from absl import app
from absl import flags
import numpy as np

from vit_jax.cli import _flags as cli_flags
from vit_jax.data import pipeline
from vit_jax.data import sources
from vit_jax.evaluators import fewshot_ridge
from vit_jax.evaluators import linear_fewshot
from vit_jax import models
from vit_jax.weights import pretrained
# pylint: enable=g-import-not-at-top,wrong-import-position


def feature_extractor(checkpoint_path: str, model_name: Optional[str], *,
                      image_size: Optional[int] = None,
                      **model_overrides: Any) -> pretrained.LoadedModel:
  """The checkpoint as a model giving pre_logits: its head dropped (and
  with it the class names)."""
  loaded = pretrained.load(checkpoint_path, model_name,
                           image_size=image_size, **model_overrides)
  model, params = models.without_head(loaded.model, loaded.params)
  return dataclasses.replace(loaded, model=model, params=params,
                             class_names=None)


def to_json(results: Dict[int, Dict[str, Any]], **facts: Any
            ) -> Dict[str, Any]:
  """`facts` plus the results with string keys ('5' shots, '0.5' l2)."""
  def with_string_keys(result):
    return {**result, 'per_l2': {repr(float(l2)): value
                                 for l2, value in result['per_l2'].items()}}
  return {**facts, 'results': {str(shots): with_string_keys(result)
                               for shots, result in sorted(results.items())}}


def run(checkpoint_path: str, model_name: Optional[str], dataset: str, *,
        data_dir: Optional[str] = None, train_split: str = 'train',
        test_split: str = 'test', image_size: Optional[int] = None,
        shots: Sequence[int] = fewshot_ridge.DEFAULT_SHOTS,
        seeds: Sequence[int] = fewshot_ridge.DEFAULT_SEEDS,
        val_per_class: int = fewshot_ridge.DEFAULT_VAL_PER_CLASS,
        l2_regs: Sequence[float] = fewshot_ridge.DEFAULT_L2_REGS,
        batch_size: int = 64, json_out: Optional[str] = None,
        features_out: Optional[str] = None,
        **model_overrides: Any) -> Dict[str, Any]:
  """Extracts features of both splits, evaluates, prints and saves.

  Args:
    checkpoint_path: any source `pretrained.load` reads.
    model_name: the variant it must be, e.g. 'ViT-B_16'; None: the file's
      own architecture, named by the file in the record.
    dataset: TFDS name, 'fashion_mnist_local' or 'imagefolder'.
    data_dir: TFDS data_dir or the image-folder root.
    train_split: the pool the shots are drawn from.
    test_split: the held-out examples.
    image_size: resolution; None: the checkpoint's native one.
    shots: as in fewshot_ridge.evaluate_fewshot.
    seeds: as in fewshot_ridge.evaluate_fewshot.
    val_per_class: as in fewshot_ridge.evaluate_fewshot.
    l2_regs: as in fewshot_ridge.evaluate_fewshot.
    batch_size: images per forward pass.
    json_out: write the record (see `to_json`) here.
    features_out: save the features and labels of both splits here (.npz:
      train_features, train_labels, test_features, test_labels), e.g. to try
      other l2 values without running the model again.
    **model_overrides: further module attributes; with `model_name`, the
      architecture overrides the checkpoint was trained with.

  Returns:
    The JSON record.
  """
  if not shots or min(shots) < 1:
    raise ValueError(f'shots must be positive integers, got {list(shots)}')
  loaded = feature_extractor(checkpoint_path, model_name,
                             image_size=image_size, **model_overrides)
  image_size = loaded.image_size
  source = sources.make_source(dataset, data_dir,
                               (train_split, test_split))
  extract = linear_fewshot.FeatureExtractor(loaded.model)

  def features(split):
    return extract(loaded.params, pipeline.get_eval_iterator(
        source, split, image_size=image_size, batch_size=batch_size,
        normalization=loaded.preprocessing))

  train_features, train_labels = features(train_split)
  test_features, test_labels = features(test_split)
  if features_out:
    np.savez(features_out, train_features=train_features,
             train_labels=train_labels, test_features=test_features,
             test_labels=test_labels)
  name = model_name or os.path.basename(str(checkpoint_path).rstrip('/'))
  results = fewshot_ridge.evaluate_fewshot(
      train_features, train_labels, test_features, test_labels, shots=shots,
      seeds=seeds, l2_regs=l2_regs, val_per_class=val_per_class)
  record = to_json(
      results, checkpoint=str(checkpoint_path), model=name,
      dataset=dataset, data_dir=data_dir, train_split=train_split,
      test_split=test_split, image_size=image_size,
      feature_dim=int(train_features.shape[1]),
      num_classes=int(train_labels.max()) + 1,
      num_train_examples=len(train_labels),
      num_test_examples=len(test_labels), shots=[int(k) for k in shots],
      seeds=[int(s) for s in seeds], val_per_class=val_per_class,
      l2_regs=[float(l2) for l2 in l2_regs])
  print(f'{name} on {dataset}: {len(train_labels)} {train_split} / '
        f'{len(test_labels)} {test_split} examples, '
        f'{train_features.shape[1]} features')
  print(fewshot_ridge.format_results(results))
  if json_out:
    if os.path.dirname(json_out):
      os.makedirs(os.path.dirname(json_out), exist_ok=True)
    with open(json_out, 'w') as f:
      json.dump(record, f, indent=1)
    print(f'wrote {json_out}')
  return record


# ----------------------------------------------------------------------------
# Command line.


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the flags of the module docstring on `flag_values`."""
  cli_flags.define_model_flags(flag_values)
  define = cli_flags.definer(flag_values)
  define(flags.DEFINE_string, 'dataset', None,
         'TFDS name, fashion_mnist_local, or imagefolder.')
  define(flags.DEFINE_string, 'data_dir', None,
         'TFDS data_dir, or the image-folder root.')
  define(flags.DEFINE_string, 'train_split', 'train', 'Pool of the shots.')
  define(flags.DEFINE_string, 'test_split', 'test', 'Held-out examples.')
  define(flags.DEFINE_list, 'shots', [str(k) for k in fewshot_ridge.DEFAULT_SHOTS],
         'Examples per class.')
  define(flags.DEFINE_list, 'seeds', [str(s) for s in fewshot_ridge.DEFAULT_SEEDS],
         'One sample per seed and shot count.')
  define(flags.DEFINE_integer, 'val_per_class',
         fewshot_ridge.DEFAULT_VAL_PER_CLASS,
         'Training examples per class, besides the shots, to choose l2 on.')
  define(flags.DEFINE_integer, 'batch_size', 64, 'Images per forward pass.')
  define(flags.DEFINE_string, 'json_out', None, 'Write the results here.')
  define(flags.DEFINE_string, 'features_out', None,
         'Save both splits\' features and labels here (.npz).')


def _integers(flag_values, name: str) -> List[int]:
  try:
    return [int(value) for value in flag_values[name].value]
  except ValueError:
    raise ValueError(f'--{name} must be a comma-separated list of integers, '
                     f'got {",".join(flag_values[name].value)!r}') from None


def main(argv: List[str], flag_values: flags.FlagValues = flags.FLAGS):
  """Runs `run` on the parsed flags; user errors exit with status 1.

  Returns None: app.run passes the return value to sys.exit.
  """
  _process.hide_gpus_from_tensorflow()
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')

  def checked_run():
    cli_flags.check_required(flag_values, 'checkpoint', 'dataset')
    return run(
        flag_values.checkpoint, flag_values.model, flag_values.dataset,
        data_dir=flag_values.data_dir, train_split=flag_values.train_split,
        test_split=flag_values.test_split, image_size=flag_values.image_size,
        shots=_integers(flag_values, 'shots'),
        seeds=_integers(flag_values, 'seeds'),
        val_per_class=flag_values.val_per_class,
        batch_size=flag_values.batch_size, json_out=flag_values.json_out,
        features_out=flag_values.features_out,
        **cli_flags.architecture_overrides(flag_values))
  cli_flags.exit_on_user_error(checked_run)


if __name__ == '__main__':
  define_flags()
  cli_flags.run(main)
