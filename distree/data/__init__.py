"""Datasets: Fashion-MNIST, CIFAR-10, CIFAR-100, an image folder and a synthetic set, as whole tensors."""
from distree.data.cifar import CIFAR10_DIR, CIFAR100_DIR
from distree.data.idx import FASHION_MNIST_DIR
from distree.data.images import IMAGE_SUFFIXES
from distree.data.splits import (DATASETS, SIZE, DataConfig, Splits, TensorImages, augment_batch, batches,
                                 dataset_shape, forward_batch, load_dataset)

__all__ = ["CIFAR10_DIR", "CIFAR100_DIR", "DATASETS", "FASHION_MNIST_DIR", "IMAGE_SUFFIXES", "SIZE", "DataConfig",
           "Splits", "TensorImages", "augment_batch", "batches", "dataset_shape", "forward_batch",
           "load_dataset"]
