"""Local TFDS builders; importing this package registers them with TFDS.

`fashion_mnist_local`: the real Fashion-MNIST from Debian's idx files (no
network needed); see `fashion_mnist_local.py`.
"""

from vit_jax.data.datasets import fashion_mnist_local

FashionMnistLocal = fashion_mnist_local.FashionMnistLocal
