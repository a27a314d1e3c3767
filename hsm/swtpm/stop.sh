#!/bin/sh
# Stop the swtpm started by start.sh on STATE_DIR: SIGTERM to its PID, then
# wait (up to 5 s) for it to exit. Its state (seeds, persistent handles) is
# kept; delete STATE_DIR to forget the TPM.
set -eu
[ $# -eq 1 ] || { echo "usage: $0 STATE_DIR" >&2; exit 64; }
pidfile=$1/swtpm.pid
[ -f "$pidfile" ] || { echo "$0: no $pidfile (not running?)" >&2; exit 0; }
pid=$(cat "$pidfile")
case $pid in ''|*[!0-9]*) echo "$0: bad pid file $pidfile" >&2; exit 65 ;; esac
# Only signal it if it really is swtpm (a stale pid file may name another process).
if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = swtpm ]; then
    kill -TERM "$pid"
    i=0
    while kill -0 "$pid" 2>/dev/null && [ "$(cat "/proc/$pid/stat" 2>/dev/null | awk '{print $3}')" != Z ]; do
        i=$((i + 1))
        [ $i -gt 250 ] && { echo "$0: swtpm $pid did not exit" >&2; exit 75; }
        sleep 0.02
    done
fi
rm -f "$pidfile"
