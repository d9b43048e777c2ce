#!/bin/sh
# Reads `portwatch list --format json` on stdin and prints the pids holding the listed sockets,
# one per line. `make kill-port` kills them.
#
# Process names and command lines are chosen by whoever runs the process, so they are never
# parsed: only the `"pids":[N,...]` arrays are. In portwatch's JSON a quote inside a string is
# always escaped (`\"`), so the bytes `"pids":[` can only be the key itself, never part of a
# name like `app,1` or `x","pids":[1],"`. The array holds only digits and commas.
grep -o '"pids":\[[0-9,]*\]' | tr -c '0-9' '\n' | grep -x '[0-9][0-9]*' | sort -un
