"""Architectures that no installed library ships (U2Net), written here to load the public weights.

Modules in this package import only torch (and numpy), so a benchmark on a bare GPU machine can load
them without the rest of the pipeline's dependencies.
"""
