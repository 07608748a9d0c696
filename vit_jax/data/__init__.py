"""Training and evaluation data: where examples come from and how they
become batches.

  sources        a dataset (TFDS, an image folder) as splits of examples
  image_folder   the image-folder source: root/<split>/<class>/<file>
  pipeline       tf.data: shuffle, augment, batch, per-process shards
  preprocess     decode, resize, crop and normalise one image (tf.data)
  image_file     one image file as a model input, without TensorFlow
  randaugment    RandAugment's ops (AugReg)
  label_maps     labels derived from other features (VTAB's tasks)
  spec           DataSpec: a run's data settings -> its source and batches
  datasets/      TFDS builders of local data (Debian's Fashion-MNIST)

TensorFlow serves this package except image_file; building, loading and
running models, and classifying files, do not need it.
"""
