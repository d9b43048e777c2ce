#!/bin/sh
# Supervised mode (`make run-sv`), as the reference's Supervisor setup: runs a resident app
# (busybox httpd on APP_PORT, default 8080) and `portwatch watch`, and restarts either one
# when it exits. On SIGTERM it stops the watcher first, so the watcher never reports the app's
# port closed because of the shutdown itself, then the app. Arguments go to `portwatch watch`.
: "${SNAPSHOT_PATH:=/var/lib/portwatch/snapshot}"
: "${CLOSE_GRACE_MS:=500}"
export SNAPSHOT_PATH CLOSE_GRACE_MS
APP_PORT=${APP_PORT:-8080}
app=
watcher=
stopping=

stop() {
    stopping=1
    [ -n "$watcher" ] && kill -TERM "$watcher" 2>/dev/null && wait "$watcher"
    [ -n "$app" ] && kill -TERM "$app" 2>/dev/null && wait "$app"
    exit 0
}
trap stop TERM INT

mkdir -p /tmp/app && echo "resident app" >/tmp/app/index.html
while [ -z "$stopping" ]; do
    if [ -z "$app" ] || ! kill -0 "$app" 2>/dev/null; then
        httpd -f -p "$APP_PORT" -h /tmp/app &
        app=$!
        echo "supervise: started the app (httpd on $APP_PORT, pid $app)" >&2
    fi
    if [ -z "$watcher" ] || ! kill -0 "$watcher" 2>/dev/null; then
        portwatch watch "$@" &
        watcher=$!
        echo "supervise: started portwatch watch (pid $watcher)" >&2
    fi
    # A wait the TERM trap interrupts at once; it also reaps children that exited.
    sleep 1 &
    wait $!
done
