"""recipelens training: fine-tunes the EfficientNet embedding model with triplet loss, evaluates it
against the raw backbone and exports it as a model folder (ONNX + manifest) for the embedder.

The only package that imports TensorFlow/Keras. Commands: ``recipelens-train`` (:mod:`training.train_cli`,
one run of a preset, :mod:`training.train`) and ``recipelens-model`` (:mod:`training.model_cli`, export the
raw backbone).
"""
