"""Training tests: tiny models on a generated image folder, 8 CPU devices."""

import dataclasses
import json
import os
import re
import shutil
import signal

import jax
import numpy as np
from PIL import Image
import pytest

from tests import helpers
from vit_jax import models
from vit_jax import sharding
from vit_jax.training import checkpoints as train_checkpoints
from vit_jax.training import loop
from vit_jax.training import optim
from vit_jax.training import preemption
from vit_jax.training import run_spec
from vit_jax.training import setup as setup_lib
from vit_jax.training import steps
from vit_jax.weights import pretrained

IMAGE_SIZE = helpers.TINY_IMAGE_SIZE  # The images and the config's.
CLASSES = ('ankle', 'bag', 'coat')
TRAIN_PER_CLASS, TEST_PER_CLASS = 8, 5  # 15 test images: not a multiple of 8.


def _class_image(rng, label):
  """A noisy image whose mean colour gives its class away."""
  image = rng.integers(0, 80, (IMAGE_SIZE, IMAGE_SIZE, 3))
  image[..., label] += 150
  return image.astype(np.uint8)


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
  root = tmp_path_factory.mktemp('folder')
  rng = np.random.default_rng(0)
  for split, count in (('train', TRAIN_PER_CLASS), ('test', TEST_PER_CLASS)):
    for label, name in enumerate(CLASSES):
      os.makedirs(root / split / name)
      for i in range(count):
        Image.fromarray(_class_image(rng, label)).save(
            root / split / name / f'{i}.png')
  return str(root)


def _records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def _train_losses(workdir):
  return {r['step']: r['train_loss'] for r in _records(workdir)
          if 'train_loss' in r}


# The run most tests read: tiny_config's 4 steps, checkpointed at 2 and 4,
# evaluated at 4, with dropout, so a resume must restore the dropout rng too.
_DROPOUT = {'model.dropout_rate': 0.1}


def _config(image_folder, **overrides):
  return helpers.tiny_config(image_folder, **{**_DROPOUT, **overrides})


@pytest.fixture(scope='module')
def finished_run(image_folder, tmp_path_factory):
  """The run of `_config`, trained once for the module in a workdir given
  relative to the working directory.

  Returns:
    (the workdir's absolute path, the record the run returned).
  """
  base = tmp_path_factory.mktemp('finished')
  with pytest.MonkeyPatch.context() as patch:
    patch.chdir(base)
    record = loop.train_and_evaluate(_config(image_folder), 'runs/relative')
  return str(base / 'runs' / 'relative'), record


def _copy(finished_run, tmp_path):
  """A copy of the finished run's workdir to change (tests share it)."""
  workdir = str(tmp_path / 'run')
  shutil.copytree(finished_run[0], workdir)
  return workdir


@pytest.mark.slow
def test_train_and_eval_write_checkpoints_metrics_and_export(image_folder,
                                                             finished_run):
  workdir, record = finished_run
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4']
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(workdir))
  records = _records(workdir)
  assert [r['step'] for r in records if 'train_loss' in r] == [1, 2, 3, 4]
  evaluation = [r for r in records if 'top1_accuracy' in r]
  assert len(evaluation) == 1 and evaluation[0]['step'] == 4
  assert evaluation[0]['num_examples'] == len(CLASSES) * TEST_PER_CLASS
  assert record['top1_accuracy'] == evaluation[0]['top1_accuracy']
  assert {'top5_accuracy', 'loss'} <= set(evaluation[0])
  # Wall time since the run started, on every record, never decreasing.
  elapsed = [r['elapsed_s'] for r in records]
  assert elapsed[0] > 0 and elapsed == sorted(elapsed)
  # The logged lr is the one applied: warm-up step 0 already uses lr > 0.
  lrs = [r['train_lr'] for r in records if 'train_lr' in r]
  schedule = optim.learning_rate_schedule(
      run_spec.optim_spec(_config(image_folder)))
  np.testing.assert_allclose(lrs, [schedule(s) for s in range(4)], rtol=1e-6)
  assert lrs[0] == pytest.approx(1e-3)


@pytest.mark.slow
def test_relative_workdir_checkpoints(finished_run):
  # `finished_run` trained in 'runs/relative' from its own directory.
  workdir, _ = finished_run
  assert workdir.endswith(os.path.join('runs', 'relative'))
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == [
      '2', '4']


@pytest.fixture(scope='module')
def options_run(image_folder, tmp_path_factory):
  """A run with the options `finished_run` leaves off: EMA, and log windows
  of 3 steps and 1 (a mean would differ from every step's lr).

  Returns:
    (its config, its workdir, the record it returned).
  """
  config = helpers.tiny_config(image_folder, log_every=3, ema_decay=0.5)
  workdir = str(tmp_path_factory.mktemp('options') / 'run')
  return config, workdir, loop.train_and_evaluate(config, workdir)


def test_a_log_window_averages_loss_but_gives_lr_and_param_norm_at_its_step():
  history = [{'loss': 1.0, 'grad_norm': 2.0, 'param_norm': 10.0, 'lr': 0.5,
              'finite': True},
             {'loss': 3.0, 'grad_norm': 4.0, 'param_norm': 11.0, 'lr': 0.25,
              'finite': True}]
  history = [{k: np.float32(v) for k, v in h.items()} for h in history]
  assert loop._window_metrics(history) == {
      'loss': 2.0, 'grad_norm': 3.0, 'param_norm': 11.0, 'lr': 0.25,
      'window_steps': 2}


@pytest.mark.slow
def test_the_logged_lr_is_the_schedules_at_the_logged_step(options_run):
  config, workdir, _ = options_run
  schedule = optim.learning_rate_schedule(run_spec.optim_spec(config))
  # Logged at step s (s updates done): the lr of the last update, s - 1.
  assert [(r['step'], r['train_lr']) for r in _records(workdir)
          if r['record'] == 'train'] == [(3, float(schedule(2))),
                                         (4, float(schedule(3)))]


@pytest.mark.slow
def test_ema_params_are_evaluated_and_exported(options_run):
  _, workdir, record = options_run
  assert 'ema_top1_accuracy' in record
  ema = pretrained.load_params(os.path.join(workdir, 'model_ema.npz'))
  final = pretrained.load_params(os.path.join(workdir, 'model.npz'))
  assert not np.allclose(ema['embedding']['kernel'],
                         final['embedding']['kernel'])


@dataclasses.dataclass
class _ConstantEvaluator:
  """An evaluator (`evaluators.Evaluator`) reporting the params it got."""
  name: str
  every: int
  params_field: str = 'params'
  record: str = 'eval'

  def evaluate(self, params):
    return {self.name: params}


def test_run_evaluators_runs_the_due_ones_on_their_params_by_record():
  state = steps.TrainState(step=0, params=1.0, opt_state=None, ema_params=2.0,
                           rng=None)
  evals = [_ConstantEvaluator('a', 2),
           _ConstantEvaluator('b', 2, params_field='ema_params'),
           _ConstantEvaluator('c', 3, record='other')]
  run = lambda step: loop.run_evaluators(evals, state, step, total_steps=10)
  assert run(2) == {'eval': {'a': 1.0, 'b': 2.0}}
  assert run(3) == {'other': {'c': 1.0}}
  assert run(5) == {}
  assert run(10) == {'eval': {'a': 1.0, 'b': 2.0}, 'other': {'c': 1.0}}
  assert list(run(6)) == ['eval', 'other']  # In the evaluators' order.


@pytest.mark.slow
def test_a_finished_run_started_again_reports_without_logging_twice(
    image_folder, finished_run, tmp_path):
  first = finished_run[1]
  workdir = _copy(finished_run, tmp_path)
  lines = open(os.path.join(workdir, 'metrics.jsonl')).read()
  again = loop.train_and_evaluate(_config(image_folder), workdir)
  assert again == first
  assert open(os.path.join(workdir, 'metrics.jsonl')).read() == lines


@pytest.mark.slow
def test_eval_counts_every_example_once_and_matches_the_export(image_folder,
                                                               finished_run):
  workdir, record = finished_run
  loaded = pretrained.load(os.path.join(workdir, 'model.npz'), 'Ti/16',
                           **helpers.TINY_VIT)
  model, params = loaded.model, loaded.params
  data = run_spec.data_spec(_config(image_folder))
  images, labels = [], []
  for batch in data.eval_batches(data.source()):
    keep = batch['mask'] > 0
    images.append(batch['image'][keep])
    labels.append(batch['label'][keep])
  images, labels = np.concatenate(images), np.concatenate(labels)
  assert len(labels) == len(CLASSES) * TEST_PER_CLASS
  logits = pretrained.predict_logits(model, params, images)
  assert record['top1_accuracy'] == pytest.approx(
      np.mean(logits.argmax(-1) == labels))

  # Its sidecar makes the export load by itself, with the class names.
  alone = pretrained.load(os.path.join(workdir, 'model.npz'))
  assert alone.model == model
  assert (alone.class_names, alone.image_size, alone.preprocessing) == (
      CLASSES, IMAGE_SIZE, models.Preprocessing())


def _flip_a_byte_of_the_largest_file(directory):
  files = [os.path.join(root, name) for root, _, names in os.walk(directory)
           for name in names]
  largest = max(files, key=os.path.getsize)
  with open(largest, 'r+b') as f:
    f.seek(os.path.getsize(largest) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.slow
@pytest.mark.parametrize('last_checkpoint', ['never written', 'damaged'])
def test_resume_after_a_stop_repeats_the_same_losses(image_folder,
                                                     finished_run, tmp_path,
                                                     caplog, last_checkpoint):
  interrupted = _copy(finished_run, tmp_path)
  step_4 = os.path.join(interrupted, 'checkpoints', '4')
  if last_checkpoint == 'never written':
    # A kill after the step-2 checkpoint: the step-4 one never happened.
    shutil.rmtree(step_4)
  else:
    _flip_a_byte_of_the_largest_file(step_4)
  loop.train_and_evaluate(_config(image_folder), interrupted)
  if last_checkpoint == 'damaged':
    assert re.search(r'checkpoint step 4 \(.*\) is damaged: changed bytes in '
                     r'.*; resuming from step 2', caplog.text)
    assert os.listdir(os.path.join(interrupted, 'damaged_checkpoints')) == [
        '4']

  assert _train_losses(interrupted) == _train_losses(finished_run[0])
  steps_logged = [r['step'] for r in _records(interrupted)
                  if 'train_loss' in r]
  assert steps_logged == [1, 2, 3, 4]  # No step logged twice.


def _one_step(config, devices, batch):
  spec = run_spec.from_config(config, num_devices=len(devices))
  setup = setup_lib.make_setup(spec, len(CLASSES), devices=devices)
  state = setup.init_state(jax.random.PRNGKey(0))
  state, metrics = setup.train_step(
      state, sharding.global_batch(batch, setup.mesh))
  return jax.device_get(state.params), jax.device_get(metrics)


def _batch(size, seed=0):
  rng = np.random.default_rng(seed)
  return {'image': rng.uniform(-1, 1, (size, IMAGE_SIZE, IMAGE_SIZE, 3)
                               ).astype(np.float32),
          'label': rng.integers(0, len(CLASSES), size).astype(np.int32)}


@pytest.fixture(scope='module')
def replicated_step(image_folder):
  """(params, metrics) of one step of a batch of 16 on the 8 devices,
  replicated: what the other ways of taking the step must give."""
  return _one_step(helpers.tiny_config(image_folder, batch_size=16),
                   jax.devices(), _batch(16))


@pytest.mark.slow
def test_eight_device_step_equals_one_device_step(image_folder,
                                                  replicated_step):
  params8, metrics8 = replicated_step
  params1, metrics1 = _one_step(
      helpers.tiny_config(image_folder, batch_size=16), jax.devices()[:1],
      _batch(16))
  np.testing.assert_allclose(metrics8['loss'], metrics1['loss'], rtol=1e-5)
  helpers.assert_trees_close(params8, params1, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_fsdp_step_equals_replicated_step(image_folder, replicated_step):
  fsdp, _ = _one_step(
      helpers.tiny_config(image_folder, batch_size=16, fsdp=True),
      jax.devices(), _batch(16))
  helpers.assert_trees_close(fsdp, replicated_step[0], rtol=1e-4, atol=1e-6)


def test_fsdp_shards_parameters_over_the_data_axis(image_folder):
  spec = run_spec.from_config(helpers.tiny_config(image_folder, fsdp=True))
  setup = setup_lib.make_setup(spec, len(CLASSES))
  state = setup.init_state(jax.random.PRNGKey(0))
  kernel = state.params['Transformer']['encoderblock_0']['MlpBlock_0'][
      'Dense_0']['kernel']  # (32, 64): 64 splits over 8 devices.
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, 'data')
  assert kernel.addressable_shards[0].data.shape == (32, 8)


@pytest.mark.slow
def test_gradient_accumulation_equals_one_big_batch(image_folder,
                                                    replicated_step):
  big, metrics_big = replicated_step
  # Two micro-batches of 8: one example per device in each.
  accumulated, metrics_acc = _one_step(
      helpers.tiny_config(image_folder, batch_size=16, grad_accum_steps=2),
      jax.devices(), _batch(16))
  np.testing.assert_allclose(metrics_acc['loss'], metrics_big['loss'],
                             rtol=1e-5)
  np.testing.assert_allclose(metrics_acc['grad_norm'],
                             metrics_big['grad_norm'], rtol=1e-4)
  helpers.assert_trees_close(accumulated, big, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_fine_tune_from_an_export_at_new_size_classes_and_normalisation(
    image_folder, tmp_path):
  # 7 classes and a pre-logits layer, at 8 px (2x2 patches), its sidecar
  # naming ImageNet's normalisation.
  source = helpers.tiny_model(num_classes=7, representation_size=16)
  imagenet = models.Preprocessing(mean=(123.675, 116.28, 103.53),
                                  std=(58.395, 57.12, 57.375))
  path = str(tmp_path / 'pretrained.npz')
  pretrained.save_npz(helpers.random_params(source, 8), path, model=source,
                      preprocessing=imagenet)
  config = helpers.tiny_config(image_folder, pretrained_path=path,
                               total_steps=2)
  assert setup_lib.preprocessing(config.pretrained_path, source) == imagenet
  workdir = str(tmp_path / 'run')
  record = loop.train_and_evaluate(config, workdir)
  tuned = pretrained.load(os.path.join(workdir, 'model.npz'))
  assert (tuned.preprocessing, tuned.class_names) == (imagenet, CLASSES)
  # A new head for the 3 classes, no pre-logits, the position embedding
  # resized to 4x4 patches.
  assert tuned.params['head']['kernel'].shape == (32, len(CLASSES))
  assert 'pre_logits' not in tuned.params
  assert tuned.params['Transformer']['posembed_input'][
      'pos_embedding'].shape == (1, 1 + 16, 32)

  def eval_loss(normalization):
    """The export's loss on the test split normalised so."""
    losses = []
    data = run_spec.data_spec(config)
    for batch in data.eval_batches(data.source(),
                                   normalization=normalization):
      keep = batch['mask'] > 0
      logits = pretrained.predict_logits(tuned.model, tuned.params,
                                         batch['image'][keep])
      losses.append(np.asarray(steps.per_example_loss(
          logits, batch['label'][keep], loss=config.loss)))
    return float(np.mean(np.concatenate(losses)))

  # The evaluation saw the checkpoint's normalisation, not [-1, 1].
  assert record['loss'] == pytest.approx(eval_loss(imagenet), rel=1e-5)
  assert record['loss'] != pytest.approx(eval_loss(None), rel=1e-3)


def test_batch_not_splitting_over_devices_fails_clearly(image_folder,
                                                        tmp_path):
  with pytest.raises(ValueError, match='does not split over 8'):
    loop.train_and_evaluate(helpers.tiny_config(image_folder, batch_size=12),
                            str(tmp_path / 'run'))


def test_a_disk_without_room_for_a_checkpoint_stops_before_training(
    image_folder, tmp_path, monkeypatch):
  monkeypatch.setattr(train_checkpoints, '_free_bytes', lambda directory: 0)
  workdir = tmp_path / 'run'
  with pytest.raises(train_checkpoints.CheckpointSaveError,
                     match='has 0 MiB free, a checkpoint needs'):
    loop.train_and_evaluate(helpers.tiny_config(image_folder), str(workdir))
  assert not (workdir / 'metrics.jsonl').exists()


@pytest.mark.slow
def test_scanned_rematerialised_run_fine_tunes_and_exports_per_block(
    image_folder, tmp_path):
  source = helpers.tiny_model(num_classes=7)
  path = str(tmp_path / 'pretrained.npz')
  pretrained.save_npz(helpers.random_params(source, 16), path)
  workdir = str(tmp_path / 'run')
  loop.train_and_evaluate(
      helpers.tiny_config(
          image_folder, pretrained_path=path, total_steps=2,
          **{'model.scan_layers': True, 'model.remat_policy': 'full'}),
      workdir)
  # The unrolled model loads the export: the layout is per block.
  loaded = pretrained.load(os.path.join(workdir, 'model.npz'), 'Ti/16',
                           **helpers.TINY_VIT)
  model, params = loaded.model, loaded.params
  assert 'encoderblock_1' in params['Transformer']
  assert model.num_classes == len(CLASSES)


@pytest.mark.parametrize('overrides,message', [
    ({'total_steps': 0, 'warmup_steps': 0},
     'config.total_steps must be >= 1, got 0'),
    ({'keep_checkpoints': 0}, 'config.keep_checkpoints must be >= 1'),
    ({'eval_batch_size': 0}, 'config.eval_batch_size must be >= 1'),
    ({'warmup_steps': -1}, 'config.warmup_steps (-1) must be in [0, '),
    ({'image_size': IMAGE_SIZE + 2},
     f'image_size {IMAGE_SIZE + 2} is not a multiple of the model\'s 4x4'),
    ({'eval_batch_size': 12}, 'eval_batch_size 12 does not split over 8'),
    # One bad value of each spec: checked before the workdir exists.
    ({'random_erasing': 1.5}, 'config.random_erasing=1.5 is a probability'),
    ({'cache': 'maybe'}, "config.cache='maybe' is unknown"),
    ({'optimizer': 'lamb'}, "config.optimizer='lamb' is unknown"),
    ({'loss': 'hinge'}, "config.loss='hinge' is unknown"),
    ({'mix_prob': 2.0}, 'config.mix_prob must be in [0, 1], got 2.0'),
    ({'mesh_model_axis': 0}, 'config.mesh_model_axis must be >= 1, got 0'),
    ({'sharding_rules': (('Dense_0/kernel',),)},
     "config.sharding_rules has ('Dense_0/kernel',)"),
    ({'eval_every': -1}, 'config.eval_every must be >= 0'),
    ({'extra_evals': ('imagenet_a',)},
     "config.extra_evals has unknown 'imagenet_a'"),
    ({'fewshot_every': 2, 'fewshot_shots': ()},
     'config.fewshot_val_per_class must be >= 1 (it chooses l2) and '
     'config.fewshot_shots non-empty.'),
    ({'log_every': -1}, 'config.log_every must be >= 0'),
])
def test_bad_configs_fail_before_anything_is_written(image_folder, tmp_path,
                                                    overrides, message):
  workdir = tmp_path / 'run'
  with pytest.raises(ValueError, match=re.escape(message)):
    loop.train_and_evaluate(helpers.tiny_config(image_folder, **overrides),
                            str(workdir))
  assert not workdir.exists()


@pytest.mark.slow
def test_a_failing_evaluation_loses_no_training(image_folder, tmp_path,
                                                monkeypatch):
  def failing_evaluators(evals, state, step, total_steps):
    del evals, state, total_steps
    if step == 2:
      raise OSError('corrupt image in the eval split')
    return {}

  monkeypatch.setattr(loop, 'run_evaluators', failing_evaluators)
  workdir = str(tmp_path / 'run')
  with pytest.raises(OSError, match='corrupt image'):
    loop.train_and_evaluate(helpers.tiny_config(image_folder), workdir)
  # The step-2 checkpoint was written before its evaluation ran.
  assert '2' in os.listdir(os.path.join(workdir, 'checkpoints'))


def _signal_at(step, signum, real_evaluators):
  """`loop.run_evaluators` that sends `signum` to this process at `step`."""

  def evaluators_then_signal(evals, state, at, total_steps):
    if at == step:
      os.kill(os.getpid(), signum)  # Arrives in the middle of the step.
    return real_evaluators(evals, state, at, total_steps)

  return evaluators_then_signal


@pytest.mark.slow
def test_each_signal_saves_its_step_and_resuming_repeats_the_run(
    image_folder, finished_run, tmp_path, monkeypatch):
  # No periodic checkpoints: the stops' are the only ones.
  config = _config(image_folder, checkpoint_every=0)
  real_evaluators = loop.run_evaluators
  handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
  stopped = str(tmp_path / 'stopped')
  # SIGTERM stops the first run at step 2, SIGINT its resume at step 3.
  for step, signum in ((2, signal.SIGTERM), (3, signal.SIGINT)):
    monkeypatch.setattr(loop, 'run_evaluators',
                        _signal_at(step, signum, real_evaluators))
    with pytest.raises(preemption.Preempted,
                       match=f'stopped by {signum.name} after step {step}'):
      loop.train_and_evaluate(config, stopped)
    assert sorted(os.listdir(os.path.join(stopped, 'checkpoints'))) == [
        str(s) for s in range(2, step + 1)]
    # The handlers are the caller's again.
    assert (signal.getsignal(signal.SIGTERM),
            signal.getsignal(signal.SIGINT)) == handlers

  monkeypatch.setattr(loop, 'run_evaluators', real_evaluators)
  loop.train_and_evaluate(config, stopped)
  assert _train_losses(stopped) == _train_losses(finished_run[0])
