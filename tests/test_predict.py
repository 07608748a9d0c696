"""The classification command line on generated checkpoints and PNGs."""

import json
import os
import subprocess
import sys

from absl import flags
import jax
import numpy as np
from PIL import Image
import pytest

from tests import helpers
from tests import numpy_vit
from vit_jax.cli import predict
from vit_jax.data import preprocess
from vit_jax import models
from vit_jax.models import posemb
from vit_jax.models import vit_family
from vit_jax.weights import pretrained

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# ViT-S/16 with one block: real patch size, fast enough for a subprocess.
MODEL = 'ViT-S_16'
ARCH = dict(num_layers=1)
CLASS_NAMES = ('ankle boot', 'bag', 'coat')
# ImageNet mean/std in uint8 units (DeiT's), unlike the released [-1, 1].
IMAGENET = models.Preprocessing(mean=(123.675, 116.28, 103.53),
                                std=(58.395, 57.12, 57.375))


def _cli(argv):
  """Parses `argv` on fresh flags and runs predict.main, as `python -m`."""
  flag_values = flags.FlagValues()
  predict.define_flags(flag_values)
  return predict.main(flag_values(['predict', *argv]), flag_values)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  root = tmp_path_factory.mktemp('predict')
  model = models.create_model(MODEL, num_classes=4, **ARCH)
  params = helpers.random_params(model, 32)
  path = str(root / 'model.npz')
  pretrained.save_npz(params, path)
  rng = np.random.default_rng(0)
  images = []
  for i, size in enumerate((32, 40, 32)):  # One needs resizing.
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    images.append(str(root / f'image{i}.png'))
    Image.fromarray(image).save(images[-1])
  bad_image = str(root / 'broken.png')
  with open(bad_image, 'wb') as f:
    f.write(b'\x89PNG not really')
  labels = str(root / 'labels.txt')
  with open(labels, 'w') as f:
    f.write('cat\ndog\nfox\nowl\n')
  return dict(checkpoint=path, params=params, images=images,
              bad_image=bad_image, labels=labels, root=root)


def test_run_matches_numpy_on_png_files(files, tmp_path, capsys):
  out = str(tmp_path / 'logits.npy')
  logits = predict.run(files['checkpoint'], 'S/16', files['images'],
                       labels=files['labels'], logits_out=out, top_k=2,
                       **ARCH)
  saved = np.load(out)
  assert saved.dtype == np.float32 and saved.shape == (3, 4)
  np.testing.assert_array_equal(saved, logits)
  # A 32 px image goes in exactly as decoded.
  raw = (np.asarray(Image.open(files['images'][0]), np.float32) - 127.5) / 127.5
  reference = numpy_vit.forward(
      vit_family.FAMILY.to_released(files['params']), raw[None],
      num_layers=1, patch=16)
  np.testing.assert_allclose(logits[0], reference[0], rtol=1e-4, atol=1e-5)
  printed = capsys.readouterr().out
  assert printed.count('class') == 3 * 2
  assert files['images'][1] in printed
  assert any(name in printed for name in ('cat', 'dog', 'fox', 'owl'))


def test_larger_image_size_resizes_the_position_embedding(files):
  logits = predict.run(files['checkpoint'], 'S/16', files['images'][:1],
                       image_size=48, **ARCH)
  params = dict(files['params'])
  encoder = dict(params['Transformer'])
  encoder['posembed_input'] = {'pos_embedding': posemb.resize(
      params['Transformer']['posembed_input']['pos_embedding'], (3, 3),
      num_prefix_tokens=1)}
  params['Transformer'] = encoder
  # The image resize is preprocess's (tested there); the check here is the
  # position-embedding resize.
  image = preprocess.load_image(files['images'][0], 48)
  reference = numpy_vit.forward(vit_family.FAMILY.to_released(params),
                                image[None], num_layers=1, patch=16)
  np.testing.assert_allclose(logits, reference, rtol=1e-4, atol=1e-5)


def test_imagenet_labels_come_from_tfds():
  names = predict.read_labels('imagenet2012', 1000)
  assert len(names) == 1000 and names[0] == 'n01440764'


def test_label_count_mismatch_is_explained(files):
  with pytest.raises(ValueError, match='has 4 labels but the checkpoint'):
    predict.read_labels(files['labels'], 5)


@pytest.mark.slow
def test_cli_success_prints_top_k(files):
  # The real ViT-S/16 has 12 layers; the file has 1, so --model alone fails
  # (next test). Here: a full-depth file through the documented command.
  model = models.create_model(MODEL, num_classes=3, num_layers=12)
  full = str(files['root'] / 'full.npz')
  # Random values of the right shapes: an init would compile 12 blocks.
  rng = np.random.default_rng(0)
  pretrained.save_npz(jax.tree_util.tree_map(
      lambda shape: 0.1 * rng.standard_normal(shape.shape).astype(np.float32),
      models.param_shapes(model, (32, 32))), full)
  result = subprocess.run(
      [sys.executable, '-m', 'vit_jax.cli.predict', f'--checkpoint={full}',
       '--model=ViT-S_16', '--top_k=3', *files['images'][:2]],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert result.stdout.count('class') == 2 * 3


@pytest.mark.slow
def test_cli_needs_only_the_checkpoint_of_an_export(files, tmp_path, capsys):
  # Our export: its sidecar has the options no array shows, the pixel
  # normalisation and the class names.
  model = helpers.tiny_model(num_classes=3, activation='gelu_erf')
  params = helpers.random_params(model, helpers.TINY_IMAGE_SIZE)
  path = str(tmp_path / 'model.npz')
  pretrained.save_npz(params, path, model=model, class_names=CLASS_NAMES,
                      preprocessing=IMAGENET, image_size=16)
  out = str(tmp_path / 'logits.npy')
  result = subprocess.run(
      [sys.executable, '-m', 'vit_jax.cli.predict', f'--checkpoint={path}',
       '--top_k=3', f'--logits_out={out}', *files['images'][:2]],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  for name in CLASS_NAMES:
    assert result.stdout.count(f'  {name}\n') == 2
  pixels = np.stack([preprocess.load_image(image, 16, IMAGENET)
                     for image in files['images'][:2]])
  expected = pretrained.predict_logits(model, params, pixels)
  np.testing.assert_allclose(np.load(out), expected, rtol=1e-5, atol=1e-6)
  # The normalisation mattered: [-1, 1] pixels give other logits.
  plain = np.stack([preprocess.load_image(image, 16)
                    for image in files['images'][:2]])
  assert not np.allclose(expected,
                         pretrained.predict_logits(model, params, plain))

  # --labels still wins over the stored names.
  labels = tmp_path / 'labels.txt'
  labels.write_text('red\ngreen\nblue\n')
  predict.run(path, None, files['images'][:1], labels=str(labels), top_k=3)
  printed = capsys.readouterr().out
  assert [printed.count(f'  {name}\n') for name in ('red', 'green', 'blue')
         ] == [1, 1, 1]
  assert not any(name in printed for name in CLASS_NAMES)


@pytest.mark.slow
def test_cli_architecture_flags_load_a_modified_model(files):
  result = subprocess.run(
      [sys.executable, '-m', 'vit_jax.cli.predict',
       f'--checkpoint={files["checkpoint"]}', '--model=ViT-S_16',
       '--num_layers=1', '--top_k=1', f'--logits_out={files["root"]}/l.npy',
       files['images'][0]],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  expected = predict.run(files['checkpoint'], 'S/16', files['images'][:1],
                         top_k=1, **ARCH)
  np.testing.assert_array_equal(np.load(f'{files["root"]}/l.npy'), expected)


@pytest.mark.slow
def test_cli_resnet_units_flag_loads_a_hybrid_with_changed_stages(
    files, tmp_path, capsys):
  # A hybrid trained with config.model.resnet_units=(1,) on R+ViT-Ti_16
  # (configs/default.py's model), saved without a sidecar.
  overrides = dict(patch_size=1, hidden_size=32, mlp_dim=64, num_heads=2,
                   num_layers=1)
  model = models.create_model('R+ViT-Ti_16', num_classes=3,
                              resnet_units=(1,), **overrides)
  params = helpers.random_params(model, 32)
  path = str(tmp_path / 'model.npz')
  pretrained.save_npz(params, path)
  flags_of = lambda units: [
      f'--checkpoint={path}', '--model=R+ViT-Ti_16', '--top_k=1',
      *(f'--{key}={value}' for key, value in overrides.items()),
      f'--resnet_units={units}', f'--logits_out={tmp_path}/l.npy',
      files['images'][0]]
  _cli(flags_of('1'))
  pixels = preprocess.load_image(files['images'][0], 32)[None]
  np.testing.assert_allclose(
      np.load(f'{tmp_path}/l.npy'),
      pretrained.predict_logits(model, params, pixels), rtol=1e-5,
      atol=1e-6)
  capsys.readouterr()
  # The variant's own stem (the root only) does not fit the file's unit,
  # and a malformed value is named.
  for units, message in (('', 'resnet units (1,) but R+ViT-Ti_16'),
                         ('1,x', "--resnet_units='1,x': give positive")):
    with pytest.raises(SystemExit):
      _cli(flags_of(units))
    error = capsys.readouterr().err
    assert error.startswith('error: ') and message in error, error


def test_a_wrong_model_is_named_by_its_flag(files, capsys):
  with pytest.raises(SystemExit):
    _cli([f'--checkpoint={files["checkpoint"]}', '--model=ViT-S_16',
          files['images'][0]])
  error = capsys.readouterr().err
  assert error.startswith('error: ') and error.rstrip().endswith(
      'has num layers 1 but ViT-S_16 has 12: is --model=ViT-S_16 right for '
      'this file?'), error


def test_cli_mixer_flags_load_a_mixer_with_changed_mlp_widths(
    files, tmp_path, capsys):
  # A Mixer trained with config.model.tokens_mlp_dim and channels_mlp_dim
  # changed on Mixer-S_16, saved without a sidecar.
  overrides = dict(patch_size=16, hidden_size=16, num_layers=1,
                   tokens_mlp_dim=6, channels_mlp_dim=10)
  model = models.create_model('Mixer-S_16', num_classes=3, **overrides)
  params = helpers.random_params(model, 32)
  path = str(tmp_path / 'mixer.npz')
  pretrained.save_npz(params, path)
  flags_of = lambda tokens_mlp_dim: [
      f'--checkpoint={path}', '--model=Mixer-S_16', '--top_k=1',
      *(f'--{key}={value}' for key, value in overrides.items()
        if key != 'tokens_mlp_dim'),
      f'--tokens_mlp_dim={tokens_mlp_dim}', f'--logits_out={tmp_path}/l.npy',
      files['images'][0]]
  _cli(flags_of(6))
  pixels = preprocess.load_image(files['images'][0], 32)[None]
  np.testing.assert_allclose(
      np.load(f'{tmp_path}/l.npy'),
      pretrained.predict_logits(model, params, pixels), rtol=1e-5,
      atol=1e-6)
  capsys.readouterr()
  with pytest.raises(SystemExit):
    _cli(flags_of(7))
  error = capsys.readouterr().err
  assert error.startswith('error: ') and (
      'tokens mlp dim 6 but Mixer-S_16 has 7' in error), error


def test_override_flags_name_their_families():
  flag_values = flags.FlagValues()
  predict.define_flags(flag_values)
  for name, family in (('tokens_mlp_dim', 'mixer models'),
                       ('num_heads', 'vit models'),
                       ('num_layers', 'vit and mixer models'),
                       ('resnet_units', 'vit models')):
    assert flag_values[name].help.startswith(family), name


def _bad_input_arguments(files, args):
  base = {'--checkpoint': files['checkpoint'], '--model': 'ViT-S_16'}
  for arg in args:
    key, value = arg.split('=', 1)
    base[key] = value
  return [*(f'{k}={v}' for k, v in base.items()), files['images'][0]]


@pytest.mark.slow
def test_cli_bad_input_exits_non_zero_with_a_message(files):
  # The program itself: status 1, the message, no traceback.
  result = subprocess.run(
      [sys.executable, '-m', 'vit_jax.cli.predict',
       *_bad_input_arguments(files, [])], cwd=REPO, capture_output=True,
      text=True, timeout=300)
  assert result.returncode == 1
  assert 'num layers 1 but ViT-S_16 has 12' in result.stderr
  assert 'Traceback' not in result.stderr


# The same path as the program's depth mismatch above, in this process.
@pytest.mark.parametrize('args,message', [
    (['--checkpoint=/nonexistent/m.npz'], 'does not exist'),
    (['--model=ViT-B_16'], 'hidden size 384 but ViT-B_16'),
])
def test_other_bad_input_exits_with_one_line(files, capsys, args, message):
  with pytest.raises(SystemExit) as exit_info:
    _cli(_bad_input_arguments(files, args))
  assert exit_info.value.code == 1
  error = capsys.readouterr().err
  assert error.startswith('error: ') and error.count('\n') == 1, error
  assert message in error


def test_truncated_checkpoint_and_broken_image(files, tmp_path):
  truncated = tmp_path / 'truncated.npz'
  data = open(files['checkpoint'], 'rb').read()
  truncated.write_bytes(data[:len(data) // 3])
  with pytest.raises(ValueError, match='not a readable .npz'):
    predict.run(str(truncated), 'S/16', files['images'], **ARCH)
  with pytest.raises(ValueError, match='broken.png'):
    predict.run(files['checkpoint'], 'S/16', [files['bad_image']], **ARCH)


@pytest.mark.parametrize('flag,image,message', [
    ('--batch_size=0', None, '--batch_size=0 must be a positive integer'),
    ('--batch_size=-2', None, '--batch_size=-2 must be a positive integer'),
    ('--image_size=0', None, '--image_size=0 must be a positive integer'),
    ('--image_size=-16', None, '--image_size=-16 must be a positive'),
    (None, 'empty', 'holds no .jpg/.jpeg/.png file (subfolders are not'),
    (None, 'no_match', "/*.gif' matches no file"),
    (None, 'missing', "nope.png' does not exist; check the IMAGE"),
    (None, 'bad_image', "Cannot decode image file '"),
])
def test_cli_bad_input_is_one_error_line(files, capsys, flag, image,
                                         message):
  empty = files['root'] / 'empty'
  empty.mkdir(exist_ok=True)
  paths = {'empty': str(empty), 'no_match': str(files['root'] / '*.gif'),
           'bad_image': files['bad_image'],
           'missing': str(files['root'] / 'nope.png')}
  argv = [f'--checkpoint={files["checkpoint"]}', f'--model={MODEL}',
          '--num_layers=1', *([flag] if flag else []),
          files['images'][0], *([paths[image]] if image else [])]
  with pytest.raises(SystemExit) as exit_info:
    _cli(argv)
  assert exit_info.value.code == 1
  error = capsys.readouterr().err
  assert error.startswith('error: ') and message in error, error
  assert len(error.splitlines()) == 1 and 'Traceback' not in error
  if image:
    assert paths[image] in error


@pytest.fixture
def photos(files, tmp_path):
  """A folder: two PNGs, a JPEG with an upper-case suffix, a text file and
  a subfolder with one more PNG."""
  folder = tmp_path / 'photos'
  (folder / 'sub').mkdir(parents=True)
  pixels = [np.asarray(Image.open(path)) for path in files['images']]
  Image.fromarray(pixels[1]).save(folder / 'b.png')
  Image.fromarray(pixels[0]).save(folder / 'a.png')
  Image.fromarray(pixels[2]).save(folder / 'c.JPEG')
  (folder / 'notes.txt').write_text('not an image')
  Image.fromarray(pixels[0]).save(folder / 'sub' / 'd.png')
  return folder


def test_a_folder_gives_its_images_sorted_and_not_its_subfolders(photos):
  assert predict.expand_images([str(photos)]) == [
      str(photos / 'a.png'), str(photos / 'b.png'), str(photos / 'c.JPEG')]


def test_globs_expand_sorted_and_files_keep_their_place(photos):
  assert predict.expand_images(
      [str(photos / 'c.JPEG'), str(photos / '**' / '*.png')]) == [
          str(photos / 'c.JPEG'), str(photos / 'a.png'),
          str(photos / 'b.png'), str(photos / 'sub' / 'd.png')]


def test_an_unknown_output_suffix_is_refused_before_loading(files):
  with pytest.raises(ValueError, match=r'^--output=top\.txt: give a file '
                     r'ending in \.json or \.csv$'):
    predict.run('/nonexistent.npz', None, files['images'], output='top.txt')


def _expected_rows(paths, logits, k, labels):
  rows = []
  for path, row in zip(paths, logits):
    probabilities = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
    order = np.argsort(-row)[:k]
    rows.append((path, [(int(i), labels[i], round(float(probabilities[i]), 6))
                        for i in order]))
  return rows


def test_output_json_holds_the_top_k_of_every_image(files, photos,
                                                     tmp_path):
  out = tmp_path / 'top.json'
  logits = predict.run(files['checkpoint'], None, [str(photos)], top_k=2,
                       labels=files['labels'], output=str(out),
                       batch_size=2)
  paths = predict.expand_images([str(photos)])
  # In batches of 2 or 3: the same logits, up to XLA's batch-shaped
  # float32 reductions.
  np.testing.assert_allclose(
      logits, predict.run(files['checkpoint'], None, paths, batch_size=3),
      rtol=1e-4, atol=1e-5)
  labels = ['cat', 'dog', 'fox', 'owl']
  expected = [{'path': path,
               'top_k': [{'class': index, 'label': label,
                          'probability': probability}
                         for index, label, probability in top]}
              for path, top in _expected_rows(paths, logits, 2, labels)]
  assert json.loads(out.read_text()) == expected


def test_output_csv_has_one_row_per_image_and_rank(files, tmp_path):
  out = tmp_path / 'top.csv'
  images = files['images'][:2]
  logits = predict.run(files['checkpoint'], None, images, top_k=3,
                       output=str(out))
  lines = ['path,rank,class,label,probability']
  for path, top in _expected_rows(images, logits, 3, [''] * 4):
    lines += [f'{path},{rank},{index},,{probability}'
              for rank, (index, _, probability) in enumerate(top, 1)]
  assert out.read_text() == '\n'.join(lines) + '\n'
