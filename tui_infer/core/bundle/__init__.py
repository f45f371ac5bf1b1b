"""Bundles for air-gapped machines: one folder (or tar file) with the app's wheels, models
and published predictions, verified file by file (manifest.json), installed with no network
(install.sh) and imported (`tui-infer bundle import`)."""
