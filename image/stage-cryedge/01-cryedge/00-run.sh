#!/bin/bash -e
# Install cryedge into the image: the checkout that image/build.sh put in files/cryedge goes to
# /opt/cryedge/src, and systemd/install.sh runs inside the chroot (venv from the aarch64 lock file, config, user,
# unit, landmark models), enabling cryedge.service. cryedge-firstboot.service imports the MQTT
# settings from /boot/firmware/cryedge.toml when the card first boots.

if [ ! -f files/cryedge/systemd/install.sh ]; then
	echo "stage-cryedge: files/cryedge is missing; build with image/build.sh" >&2
	exit 1
fi

rm -rf "${ROOTFS_DIR}/opt/cryedge/src"
install -d -m 755 "${ROOTFS_DIR}/opt/cryedge"
cp -a files/cryedge "${ROOTFS_DIR}/opt/cryedge/src"
install -m 644 files/cryedge-firstboot.service "${ROOTFS_DIR}/etc/systemd/system/"

on_chroot <<'CHROOT'
/opt/cryedge/src/systemd/install.sh --source /opt/cryedge/src
systemctl enable cryedge-firstboot.service
CHROOT
