"""featurize: corpora -> pretrained encoders / openSMILE / filterbanks -> a Zarr feature store."""
