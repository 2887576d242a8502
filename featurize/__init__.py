"""featurize: corpora -> pretrained encoders / openSMILE / filterbanks -> a Zarr feature store."""

DEFAULT_STORE = "cache/features.zarr"  # where `featurize` and `train` look when --store is not given
