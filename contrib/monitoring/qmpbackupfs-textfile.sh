#!/bin/sh
# Copy the metrics of a qmpbackupfs mount into node_exporter's textfile
# collector directory, atomically (a temporary file in the same directory,
# then rename), so node_exporter never reads half a file.
#
#   qmpbackupfs-textfile.sh MOUNT [DIR]
#
# MOUNT: where qmpbackupfs is mounted (its MOUNT/.metrics is read).
# DIR:   node_exporter's --collector.textfile.directory
#        (default /var/lib/prometheus/node-exporter).
# Run it every minute (qmpbackupfs-textfile.timer) or from cron.
set -eu
mnt=${1:?usage: qmpbackupfs-textfile.sh MOUNT [DIR]}
dir=${2:-/var/lib/prometheus/node-exporter}
out=$dir/qmpbackupfs.prom
tmp=$(mktemp "$dir/.qmpbackupfs.prom.XXXXXX")
trap 'rm -f "$tmp"' EXIT
if ! cat "$mnt/.metrics" > "$tmp"; then
  echo "qmpbackupfs-textfile: cannot read $mnt/.metrics: is qmpbackupfs mounted there?" >&2
  exit 1
fi
chmod 644 "$tmp"
mv -f "$tmp" "$out"
trap - EXIT
