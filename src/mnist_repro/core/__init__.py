"""The base every stage shares: typed params (config, typed_yaml), MNIST on disk (data),
atomic files, one-line errors and the stage CLI wrapper, and the architectures (models)."""
