#!/bin/bash -e
# pi-gen runs this before the sub-stages: start from the previous stage's root (stage2, Lite).
if [ ! -d "${ROOTFS_DIR}" ]; then
	copy_previous
fi
