#!/bin/sh
# Writes the secrets docker-compose.yml reads, one file each, into ./secrets (or $1): random values from
# /dev/urandom, for every file that does not exist yet. Existing files are never changed, so running it
# again is safe (PostgreSQL keeps the password it was initialised with; a new validator-key would be a new
# contract owner). Put your own values in those files instead, before the first `up`, to use them.
#   sh deploy/secrets.sh && docker compose up -d --build
set -eu
dir="${1:-secrets}"
umask 077
mkdir -p "$dir"
chmod 700 "$dir"   # yours alone on this host
random_hex() { od -An -tx1 -N32 /dev/urandom | tr -d ' \n'; }
for name in postgres-password admin-token grafana-admin-password seed-secret validator-password \
    worker-1-password worker-2-password worker-3-password validator-key; do
    [ -e "$dir/$name" ] && continue
    if [ "$name" = validator-key ]; then printf '0x%s\n' "$(random_hex)"; else printf '%s\n' "$(random_hex)"; fi > "$dir/$name"
    # compose mounts each file as it is: Grafana reads its own as a non-root user (the directory still keeps
    # other users of this host out); the stagewise and PostgreSQL containers read theirs as root
    if [ "$name" = grafana-admin-password ]; then chmod 644 "$dir/$name"; fi
    echo "wrote $dir/$name"
done
