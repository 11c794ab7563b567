"""The export as a file format: paths, names, specs, manifest and golden I/O, errors, comparisons.

The contract every other part reads: `exporter` writes it, `serving` reads it, and
neither TensorFlow nor any other part of seqexport is imported here.
"""
