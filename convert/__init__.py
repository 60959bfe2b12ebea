"""cryedge host-side toolchain: datasets, training, conversion to TFLite. Needs the ``convert`` extra."""
