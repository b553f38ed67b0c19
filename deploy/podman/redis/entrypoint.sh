#!/bin/bash
# The entrypoint of localhost/netcron/redis (deploy/podman/redis/Containerfile).
set -Eeuo pipefail

# `docker run IMAGE --appendonly yes` or `IMAGE /path/redis.conf`, as with the official image.
if [ "${1:0:1}" = '-' ] || [ "${1%.conf}" != "$1" ]; then
    set -- redis-server "$@"
fi

if [ "$1" != redis-server ]; then
    exec "$@"
fi

if [ "$(id -u)" = 0 ]; then
    # A fresh named volume or bind mount may belong to root.
    chown -R redis:redis /data 2>/dev/null || true
    exec setpriv --reuid=redis --regid=redis --init-groups "${BASH_SOURCE[0]}" "$@"
fi

# Without a configuration file Redis 7 binds every address, but protected mode then refuses
# every client that is not on loopback while no password is set. The official image turns it
# off at build time; here it is the first option, so a configuration file (which must come
# first) or a later `--protected-mode yes` on the command still wins.
shift
if [ $# -gt 0 ] && [ "${1:0:1}" != '-' ]; then
    set -- "$1" --protected-mode no "${@:2}"
else
    set -- --protected-mode no "$@"
fi
exec redis-server "$@"
