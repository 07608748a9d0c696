r"""VTAB-1k fine-tuning: the 19 tasks of the paper's Table 2 and Figure 2.

  .venv/bin/python -m vit_jax.main \
      --config=configs/vtab.py:ViT-B_16,clevr_count \
      --workdir=runs/b16_vtab_clevr_count \
      [--config.pretrained_path=checkpoints/ViT-B_16.npz] \
      [--config.data_dir=~/tensorflow_datasets]

The argument is 'MODEL,TASK' or 'MODEL,TASK,train800':
  * 'MODEL,TASK' (the reported number): train on train800val200, the 1,000
    examples of VTAB-1k, evaluate on the task's test split.
  * 'MODEL,TASK,train800' (hyper-parameter selection): train on the 800,
    evaluate on the 200 validation examples (val200).

The recipe is the paper's (Table 4 and appendix B.1.1), the same for every
task: SGD momentum 0.9, batch 512, 2,500 steps, lr 0.01, cosine decay,
gradient clipping at global norm 1, no weight decay. "We do not use
task-specific input resolutions. Instead we find that Vision Transformer
benefits most from a high resolution (384 x 384) for all tasks": 384 px. The
paper follows the pre-processing of Kolesnikov et al. (BiT); here training
images are resized without random crops or flips, since several tasks'
labels are positions, orientations or distances that crops and flips would
change. Warm-up: 250 steps (the paper gives none for fine-tuning; this is
configs/vit.py's rule, a tenth of the steps up to 500). The head is replaced
by a zero head of the task's classes and the position embedding resized to
the 384 px grid.

Data: TFDS datasets prepared beforehand in config.data_dir (this code never
downloads). TFDS names carry the version pattern VTAB-1k read (the task
adaptation code's), except oxford_iiit_pet: VTAB read 3.*.*, which TFDS 4.9
no longer builds, so any prepared version is accepted. train800 and val200
are the first 800 of VTAB's train split and the first 200 of its val split;
where a dataset has no validation split VTAB carves one out of 'train' by
percentage, which the index ranges below spell out (e.g. CIFAR-100: train =
train[:90%] = train[:45000], val = train[45000:]). train800val200 is
'<train800>+<val200>'.

| task | TFDS dataset | label | classes | train800 | val200 | test |
|---|---|---|---|---|---|---|
| caltech101 | caltech101:3.*.* | label | 102 | train[:800] | train[2754:2954] | test |
| cifar100 | cifar100:3.*.* | label | 100 | train[:800] | train[45000:45200] | test |
| dtd | dtd:3.*.* | label | 47 | train[:800] | validation[:200] | test |
| oxford_flowers102 | oxford_flowers102:2.*.* | label | 102 | train[:800] | validation[:200] | test |
| oxford_iiit_pet | oxford_iiit_pet | label | 37 | train[:800] | train[2944:3144] | test |
| sun397 | sun397/tfds:4.*.* | label | 397 | train[:800] | validation[:200] | test |
| svhn | svhn_cropped:3.*.* | label | 10 | train[:800] | train[65931:66131] | test |
| patch_camelyon | patch_camelyon:2.*.* | label | 2 | train[:800] | validation[:200] | test |
| eurosat | eurosat/rgb:2.*.* | label | 10 | train[:800] | train[16200:16400] | train[21600:] |
| resisc45 | resisc45:3.*.* | label | 45 | train[:800] | train[18900:19100] | train[25200:] |
| diabetic_retinopathy | diabetic_retinopathy_detection/btgraham-300:3.*.* | label | 5 | train[:800] | validation[:200] | test |
| clevr_count | clevr:3.*.* | objects: count - 3 | 8 | train[:800] | train[63000:63200] | validation |
| clevr_distance | clevr:3.*.* | closest pixel_coords depth, bins at 8, 8.5, 9, 9.5, 10 | 6 | train[:800] | train[63000:63200] | validation |
| dmlab | dmlab:2.0.1 | label | 6 | train[:800] | validation[:200] | test |
| kitti_distance | kitti:3.*.* | closest Car/Van/Truck depth, bins at 8, 20, 999 m; none: 3 | 4 | train[:800] | validation[:200] | test |
| dsprites_location | dsprites:2.*.* | label_x_position // 2 | 16 | train[:800] | train[589824:590024] | train[663552:] |
| dsprites_orientation | dsprites:2.*.* | label_orientation * 16 // 40 | 16 | train[:800] | train[589824:590024] | train[663552:] |
| smallnorb_azimuth | smallnorb:2.*.* | label_azimuth | 18 | train[:800] | test[:200] | test[12150:] |
| smallnorb_elevation | smallnorb:2.*.* | label_elevation | 9 | train[:800] | test[:200] | test[12150:] |

Derived labels are computed by `vit_jax/data/label_maps.py` (config.label_map) inside
the input pipeline. Expected results (paper Table 2): VTAB mean over the 19
tasks 77.63 for ViT-H/14 (JFT), 76.28 for ViT-L/16 (JFT). Runtime: 2,500
steps of batch 512 at 384 px for ViT-B/16 are about 2e17 FLOPs (~50 GFLOPs
forward x 3 x 1.28M images): minutes on 8 modern accelerators per task, not
practical on a CPU.

Runs: no full run is logged here; the expected figures are the paper's
(docs/experiments.md#paper-recipes).
"""

from typing import NamedTuple, Optional

from configs import common
from configs import vit


class Task(NamedTuple):
  """One VTAB-1k task: where its data is and how it is split and labelled."""
  dataset: str  # TFDS name[/config][:version pattern].
  train800: str
  val200: str
  test: str
  num_classes: int
  label_map: Optional[str] = None  # Key of vit_jax.data.label_maps.LABEL_MAPS.


_CLEVR = ('clevr:3.*.*', 'train[:800]', 'train[63000:63200]', 'validation')
_DSPRITES = ('dsprites:2.*.*', 'train[:800]', 'train[589824:590024]',
             'train[663552:]')
_SMALLNORB = ('smallnorb:2.*.*', 'train[:800]', 'test[:200]', 'test[12150:]')


TASKS = {
    # Natural.
    'caltech101': Task('caltech101:3.*.*', 'train[:800]',
                       'train[2754:2954]', 'test', 102),
    'cifar100': Task('cifar100:3.*.*', 'train[:800]',
                     'train[45000:45200]', 'test', 100),
    'dtd': Task('dtd:3.*.*', 'train[:800]', 'validation[:200]', 'test', 47),
    'oxford_flowers102': Task('oxford_flowers102:2.*.*', 'train[:800]',
                              'validation[:200]', 'test', 102),
    'oxford_iiit_pet': Task('oxford_iiit_pet', 'train[:800]',
                            'train[2944:3144]', 'test', 37),
    'sun397': Task('sun397/tfds:4.*.*', 'train[:800]',
                   'validation[:200]', 'test', 397),
    'svhn': Task('svhn_cropped:3.*.*', 'train[:800]',
                 'train[65931:66131]', 'test', 10),
    # Specialized.
    'patch_camelyon': Task('patch_camelyon:2.*.*', 'train[:800]',
                           'validation[:200]', 'test', 2),
    'eurosat': Task('eurosat/rgb:2.*.*', 'train[:800]',
                    'train[16200:16400]', 'train[21600:]', 10),
    'resisc45': Task('resisc45:3.*.*', 'train[:800]',
                     'train[18900:19100]', 'train[25200:]', 45),
    'diabetic_retinopathy': Task(
        'diabetic_retinopathy_detection/btgraham-300:3.*.*', 'train[:800]',
        'validation[:200]', 'test', 5),
    # Structured.
    'clevr_count': Task(*_CLEVR, 8, 'clevr_count'),
    'clevr_distance': Task(*_CLEVR, 6, 'clevr_distance'),
    'dmlab': Task('dmlab:2.0.1', 'train[:800]', 'validation[:200]', 'test', 6),
    'kitti_distance': Task('kitti:3.*.*', 'train[:800]', 'validation[:200]',
                           'test', 4, 'kitti_distance'),
    'dsprites_location': Task(*_DSPRITES, 16, 'dsprites_location'),
    'dsprites_orientation': Task(*_DSPRITES, 16, 'dsprites_orientation'),
    'smallnorb_azimuth': Task(*_SMALLNORB, 18, 'smallnorb_azimuth'),
    'smallnorb_elevation': Task(*_SMALLNORB, 9, 'smallnorb_elevation'),
}

TOTAL_STEPS = 2_500
LEARNING_RATE = 0.01
MODES = ('train800val200', 'train800')


def splits(task: Task, mode: str = 'train800val200'):
  """(train split, eval split) of `task` for a MODES entry."""
  if mode == 'train800':
    return task.train800, task.val200
  return f'{task.train800}+{task.val200}', task.test


def get_config(arg='ViT-B_16,cifar100'):
  """`arg` is 'MODEL,TASK' or 'MODEL,TASK,train800' (see the docstring)."""
  model_name, task_name, *rest = arg.split(',')
  mode = rest[0] if rest else MODES[0]
  if task_name not in TASKS:
    raise ValueError(f'unknown VTAB task {task_name!r}; the 19 tasks: '
                     f'{sorted(TASKS)}')
  if len(rest) > 1 or mode not in MODES:
    raise ValueError(f'expected MODEL,TASK[,MODE] with MODE in {MODES}, got '
                     f'{arg!r}')
  task = TASKS[task_name]
  config = vit.fine_tuning_config(model_name, TOTAL_STEPS, LEARNING_RATE)
  config.dataset = task.dataset
  config.label_map = task.label_map
  config.num_classes = task.num_classes
  config.train_split, config.eval_split = splits(task, mode)
  config.train_augment = 'resize'  # No crops or flips: see the docstring.
  config.random_flip = False
  config.eval_every = 500
  config.checkpoint_every = 500
  return common.lock(config)
