#!/bin/sh
# Start a private swtpm (TPM 2.0) for demos, benchmarks and manual tests.
#
#   hsm/swtpm/start.sh STATE_DIR [PORT] [--log LEVEL] [--ek]
#
# Serves the TPM on 127.0.0.1:PORT and its control channel on PORT+1 (the
# swtpm TCTI derives the control port as PORT+1), daemonised, PID in
# STATE_DIR/swtpm.pid, log in STATE_DIR/swtpm.log (LEVEL 20 logs every TPM
# command, for counting). Prints the TCTI to use, e.g. for
#   export SESAME_TPM2_DEVICE=$(hsm/swtpm/start.sh /tmp/tpm 2321)
# --ek first runs swtpm_setup to create EK certificates, with its local CA
# kept inside STATE_DIR (never /var/lib/swtpm-localca).
# Restarting on the same STATE_DIR is a reboot: PCRs reset, seeds and
# persistent handles kept. Stop with hsm/swtpm/stop.sh STATE_DIR.
set -eu

usage() { echo "usage: $0 STATE_DIR [PORT] [--log LEVEL] [--ek]" >&2; exit 64; }
[ $# -ge 1 ] || usage
dir=$1; shift
port=2321
case ${1:-} in [0-9]*) port=$1; shift ;; esac
level=
ek=
while [ $# -gt 0 ]; do
    case $1 in
        --log) [ $# -ge 2 ] || usage; level=$2; shift 2 ;;
        --ek) ek=1; shift ;;
        *) usage ;;
    esac
done

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
if [ -f "$dir/swtpm.pid" ] && kill -0 "$(cat "$dir/swtpm.pid")" 2>/dev/null; then
    echo "$0: swtpm already running on $dir (pid $(cat "$dir/swtpm.pid"))" >&2
    exit 73
fi

if [ -n "$ek" ] && [ ! -f "$dir/tpm2-00.permall" ]; then
    here=$(cd "$(dirname "$0")" && pwd)
    mkdir -p "$dir/localca"
    sed "s|@STATE_DIR@|$dir|g" "$here/swtpm-localca.conf.in" > "$dir/swtpm-localca.conf"
    sed "s|@STATE_DIR@|$dir|g" "$here/swtpm_setup.conf.in" > "$dir/swtpm_setup.conf"
    swtpm_setup --tpm2 --tpmstate "$dir" --config "$dir/swtpm_setup.conf" \
        --create-ek-cert --create-platform-cert --lock-nvram --overwrite >"$dir/setup.log" 2>&1 || {
        echo "$0: swtpm_setup failed; see $dir/setup.log" >&2
        exit 70
    }
fi

log="file=$dir/swtpm.log"
[ -n "$level" ] && log="$log,level=$level"
swtpm socket --tpm2 \
    --server "type=tcp,port=$port,bindaddr=127.0.0.1" \
    --ctrl "type=tcp,port=$((port + 1)),bindaddr=127.0.0.1" \
    --flags not-need-init,startup-clear \
    --tpmstate "dir=$dir" \
    --pid "file=$dir/swtpm.pid" \
    --log "$log" \
    --daemon

# Ready in ~20 ms; allow 5 s.
i=0
until swtpm_ioctl --tcp "127.0.0.1:$((port + 1))" -c >/dev/null 2>&1; do
    i=$((i + 1))
    if [ $i -gt 250 ]; then
        echo "$0: swtpm did not become ready on port $port" >&2
        exit 69
    fi
    sleep 0.02
done
echo "swtpm:host=127.0.0.1,port=$port"
