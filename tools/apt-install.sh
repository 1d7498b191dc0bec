#!/usr/bin/env bash
# Install Debian packages for the make targets (root, as in CI): `tools/apt-install.sh PACKAGE...`.
# When another apt or dpkg holds its lock (an unattended upgrade, a second make), wait for it and say
# so, instead of failing with "Could not get lock": apt-get's DPkg::Lock::Timeout covers dpkg's lock but
# not the package lists' or the archives' (apt 2.6), so every step is retried while a lock is held.
set -euo pipefail
[ "$#" -gt 0 ] || exit 0
wait_s="${APT_LOCK_WAIT_S:-600}"
export DEBIAN_FRONTEND=noninteractive

with_lock_wait() {
    local deadline=$((SECONDS + wait_s)) said="" output status
    while true; do
        status=0
        output="$("$@" -o "DPkg::Lock::Timeout=${wait_s}" 2>&1)" || status=$?
        if [ "$status" -eq 0 ]; then
            return 0
        fi
        if ! grep -q "Could not get lock\|Unable to lock\|Unable to acquire" <<<"$output"; then
            printf '%s\n' "$output" >&2
            return "$status"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            printf '%s\n' "$output" >&2
            echo "apt-install: another package manager held the lock for ${wait_s} s; giving up" >&2
            return "$status"
        fi
        if [ -z "$said" ]; then
            holder="$(grep -o 'held by process [0-9]* ([^)]*)' <<<"$output" | head -1 || true)"
            echo "apt-install: waiting for another package manager to finish (${holder:-lock held}; up to ${wait_s} s)" >&2
            said=1
        fi
        sleep 3
    done
}

echo "apt-install: installing $*"
with_lock_wait apt-get update -qq
with_lock_wait apt-get install -y -qq --no-install-recommends "$@" >/dev/null
