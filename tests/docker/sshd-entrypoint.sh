#!/bin/sh
# Entrypoint of sshfs-test/sshd: configure from the environment, then run sshd in the foreground
# (logs on stderr, i.e. `docker logs`). /etc/ssh/sshd_config holds the settings every test server
# shares (tests/sshd/sshd_config.common); what is this server's own is given here with -o.
#   SSHD_PORT           port to listen on (default 2222)
#   SSHD_LISTEN         address to listen on (default 127.0.0.1; the container uses host networking)
#   ROOT_PASSWORD       password of root (login disabled for passwords if unset)
#   TESTER_PASSWORD     password of tester, uid 1000 (likewise)
#   AUTHORIZED_KEYS     public keys accepted for root and tester (plus /keys/authorized_keys if mounted)
#   SSHD_HOSTKEY_DIR    where host keys live (default /etc/ssh/hostkeys; mount it to keep or swap
#                       keys: missing keys are generated at start)
#   SSHD_SFTP           internal (default: internal-sftp) or server (/usr/lib/openssh/sftp-server)
#   SSHD_DATA_OWNER     owner given to /data at start (default 1000:1000, tester)
set -eu

die() { echo "sshd-entrypoint: $*" >&2; exit 1; }

PORT=${SSHD_PORT:-2222}
LISTEN=${SSHD_LISTEN:-127.0.0.1}
HOSTKEY_DIR=${SSHD_HOSTKEY_DIR:-/etc/ssh/hostkeys}

set_password() {
    # sha512-crypt; its alphabet [./0-9A-Za-z$] is safe in the sed replacement below.
    hash=$(mkpasswd -m sha512 "$2") || die "cannot hash the password of $1"
    sed -i "s|^$1:[^:]*:|$1:$hash:|" /etc/shadow
}
if [ -n "${ROOT_PASSWORD:-}" ]; then set_password root "$ROOT_PASSWORD"; fi
if [ -n "${TESTER_PASSWORD:-}" ]; then set_password tester "$TESTER_PASSWORD"; fi

mkdir -p "$HOSTKEY_DIR"
hostkey_args=""
for type in ed25519 ecdsa rsa; do
    key="$HOSTKEY_DIR/ssh_host_${type}_key"
    if [ ! -s "$key" ]; then
        rm -f "$key" "$key.pub"
        ssh-keygen -q -t "$type" -N '' -C "sshfs-test-$type" -f "$key" || die "cannot generate $key"
    fi
    # sshd refuses private keys readable by others.
    chown 0:0 "$key"
    chmod 0600 "$key"
    hostkey_args="$hostkey_args -h $key"
done

mkdir -p /etc/ssh/authorized_keys
keys=$(
    if [ -n "${AUTHORIZED_KEYS:-}" ]; then printf '%s\n' "$AUTHORIZED_KEYS"; fi
    if [ -r /keys/authorized_keys ]; then cat /keys/authorized_keys; fi
)
for user in root tester; do
    printf '%s\n' "$keys" >"/etc/ssh/authorized_keys/$user"
    chmod 0644 "/etc/ssh/authorized_keys/$user"
done

mkdir -p /data
chown "${SSHD_DATA_OWNER:-1000:1000}" /data

case "${SSHD_SFTP:-internal}" in
    internal) sftp=internal-sftp ;;
    server) sftp=/usr/lib/openssh/sftp-server ;;
    *) die "SSHD_SFTP must be 'internal' or 'server', not '$SSHD_SFTP'" ;;
esac

# This server's own settings. Keys come from the environment / a mounted dir (copied above); users'
# own ~/.ssh/authorized_keys work too.
set -- -p "$PORT" -o "ListenAddress=$LISTEN" -o "Subsystem=sftp $sftp" -o PidFile=/run/sshd.pid \
    -o "AuthorizedKeysFile=/etc/ssh/authorized_keys/%u .ssh/authorized_keys"
# Fail early and readably on a bad configuration (sshd -t), then serve.
# shellcheck disable=SC2086 # hostkey_args is a list of words
/usr/sbin/sshd -t "$@" $hostkey_args || die "sshd rejected its configuration"
echo "sshd-entrypoint: listening on $LISTEN:$PORT (sftp: $sftp, host keys in $HOSTKEY_DIR)" >&2
# shellcheck disable=SC2086
exec /usr/sbin/sshd -D -e "$@" $hostkey_args
