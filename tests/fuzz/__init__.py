"""The regular-suite samples of the fuzz targets in `testkit.fuzz`, and the corpus of
inputs that once broke something (``corpus/``)."""
