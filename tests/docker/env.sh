# shellcheck shell=bash
# The one home of the test settings and their defaults. Sourced by tests/run.sh, tests/docker/*.sh
# and try.sh; docker-compose.test.yml, tests/compose/e2e.yml and tests/e2e/mod.rs read the exported
# variables and have no defaults of their own. Every value can be overridden from the environment.

# The plugin under test (as installed by ./build-rootfs.sh --install NAME).
export SSHFS_PLUGIN=${SSHFS_PLUGIN:-vendor/sshfs:latest}
# Docker names volumes' driver with the tag: make the name comparable.
case $SSHFS_PLUGIN in *:*) ;; *) SSHFS_PLUGIN=$SSHFS_PLUGIN:latest ;; esac
# The test SSH server: host networking, loopback only.
export SSHFS_TEST_HOST=127.0.0.1
export SSHFS_TEST_PORT=${SSHFS_TEST_PORT:-2222}
# A second server of the same image that tests/plugin_jump.rs starts as a jump host (ProxyJump).
export SSHFS_TEST_JUMP_PORT=${SSHFS_TEST_JUMP_PORT:-2223}
export SSHFS_TEST_PASSWORD=${SSHFS_TEST_PASSWORD:-tester-secret}
export SSHFS_TEST_ROOT_PASSWORD=${SSHFS_TEST_ROOT_PASSWORD:-root-secret}
# The server's SFTP implementation: internal (internal-sftp) or server (/usr/lib/openssh/sftp-server).
export SSHFS_TEST_SFTP=${SSHFS_TEST_SFTP:-internal}
# Host directory holding the server's /data (data/), host keys (hostkeys/) and the client key
# pair (client/: id_ed25519, id_ed25519.pub, authorized_keys), also used as the plugin's
# sshkey.source in the key-auth test.
export SSHFS_TEST_DIR=${SSHFS_TEST_DIR:-/tmp/sshfs-e2e}
export SSHFS_TEST_BUSYBOX_IMAGE=${SSHFS_TEST_BUSYBOX_IMAGE:-sshfs-test/busybox:latest}
export SSHFS_TEST_SSHD_IMAGE=${SSHFS_TEST_SSHD_IMAGE:-sshfs-test/sshd:latest}
# docker-compose project and container name of the test SSH server.
export SSHFS_TEST_PROJECT=${SSHFS_TEST_PROJECT:-sshfs-test}
export SSHFS_TEST_SSHD_CONTAINER=${SSHFS_TEST_SSHD_CONTAINER:-sshfs-test-sshd}
# The throwaway registry of the install/upgrade test (tests/e2e/registry.rs), on 127.0.0.1.
export SSHFS_TEST_REGISTRY_PORT=${SSHFS_TEST_REGISTRY_PORT:-5000}
# 1: build the arm64 and armv7 bundles and run their binaries under qemu (tests/cross_arch.rs);
# 0: skip them (no cross compilers here).
export SSHFS_CROSS=${SSHFS_CROSS:-1}
# The multi-node swarm test (tests/swarm/multinode.sh): names of its network namespaces and veths
# (PREFIX-m, PREFIX-w; at most 12 characters) and of its directories (/var/lib/PREFIX,
# /run/PREFIX); the /24 of the veth pair (manager .1, worker .2); the ports of its registry and
# test SSH server, inside the manager's namespace (so they never clash with the host's).
export SSHFS_SWARM_PREFIX=${SSHFS_SWARM_PREFIX:-sshfs-swarm}
export SSHFS_SWARM_NET=${SSHFS_SWARM_NET:-10.99.0}
export SSHFS_SWARM_REGISTRY_PORT=${SSHFS_SWARM_REGISTRY_PORT:-5002}
export SSHFS_SWARM_SSHD_PORT=${SSHFS_SWARM_SSHD_PORT:-2450}
