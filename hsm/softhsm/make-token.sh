#!/bin/sh
# Creates an isolated SoftHSM2 token for demos and tests.
#
#   hsm/softhsm/make-token.sh DIR LABEL
#
# Writes DIR/softhsm2.conf (tokens under DIR/tokens), initializes a token
# labelled LABEL with a random SO PIN and user PIN, stores the user PIN in
# DIR/user.pin (mode 0600) and the SO PIN in DIR/so.pin (mode 0600), and
# prints the line to export SOFTHSM2_CONF plus a URI for a key on it.
# Nothing is printed that is secret: the PINs stay in their files.
set -eu

if [ $# -ne 2 ]; then
    echo "usage: $0 DIR LABEL" >&2
    exit 64
fi
dir=$1
label=$2

command -v softhsm2-util >/dev/null 2>&1 || {
    echo "$0: softhsm2-util not found (install softhsm2)" >&2
    exit 69
}

module=
for candidate in /usr/lib/softhsm/libsofthsm2.so \
                 /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so \
                 /usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so \
                 /usr/lib64/pkcs11/libsofthsm2.so \
                 /usr/lib64/softhsm/libsofthsm.so; do
    if [ -f "$candidate" ]; then module=$candidate; break; fi
done
[ -n "$module" ] || { echo "$0: libsofthsm2.so not found" >&2; exit 69; }

umask 077
mkdir -p "$dir/tokens"
dir=$(cd "$dir" && pwd)
conf=$dir/softhsm2.conf
cat > "$conf" <<CONF
directories.tokendir = $dir/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF

# Random PINs: 16 hex characters each, never on a command line of ours
# longer than needed (softhsm2-util only takes them as arguments).
random_pin() { od -An -N8 -tx1 /dev/urandom | tr -d ' \n'; }
so_pin=$(random_pin)
user_pin=$(random_pin)
printf '%s\n' "$so_pin" > "$dir/so.pin"
printf '%s\n' "$user_pin" > "$dir/user.pin"
chmod 600 "$dir/so.pin" "$dir/user.pin"

SOFTHSM2_CONF=$conf softhsm2-util --init-token --free --label "$label" \
    --so-pin "$so_pin" --pin "$user_pin" >/dev/null

echo "export SOFTHSM2_CONF=$conf"
echo "# key URI (create the key with: sesame pkcs11 create-key URI --type aes):"
echo "# pkcs11:token=$label;object=sesame-kek?module-path=$module&pin-source=file:$dir/user.pin"
