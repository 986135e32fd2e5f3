#!/bin/bash
# Kept remote connections counted (doc/PERFORMANCE.md, "Kept remote connections"):
# N messages to one destination queued while the instance is stopped, then delivered to
# Postfix's smtp-sink on 127.0.0.1:PORT under strace -f -c; MODE before sets
# timeoutremoteidle 0 (one quill-remote and connection per message). Bounded: 120 s of waiting.
# usage: tests/bench/reuse-count.sh before|after N PORT   (after make all)
set -u
mode=$1; n=$2; port=$3
B=$(cd "$(dirname "$0")/../.." && pwd)/target/release
D=${TMPDIR:-/tmp}/quill-reuse-count/$mode; rm -rf $D; mkdir -p $D
# create the instance, then stop it
timeout 5 $B/quill-up -d $D/q -l 127.0.0.1:$((port+1)) >/dev/null 2>&1 &
sleep 2; kill %1 2>/dev/null; wait
echo "remote.test:[127.0.0.1]:$port" > $D/q/control/smtproutes
echo 20 > $D/q/control/concurrencydestination 2>/dev/null
[ $mode = before ] && echo 0 > $D/q/control/timeoutremoteidle
for i in $(seq 1 $n); do printf 'Subject: m%s\nX-Bench-Id: %s\n\nbody\n' $i $i | QUILL_HOME=$D/q $B/sendmail -i bench@remote.test || echo fail; done
mkdir -p $D/sink; (cd $D/sink && /usr/sbin/smtp-sink -c -d "%M%S" -u $(id -un) 127.0.0.1:$port 1000 > $D/sink.out 2>&1) &
sinkpid=$!
sleep 0.5
/usr/bin/time -f "%U %S" -o $D/time strace -f -c -o $D/strace $B/quill-up -d $D/q -l 127.0.0.1:$((port+1)) > $D/up.log 2>&1 &
for t in $(seq 1 240); do
  c=$(grep -rl "X-Bench-Id" $D/sink 2>/dev/null | wc -l)
  [ "$c" -ge $n ] && break; sleep 0.5
done
sleep 1
kill -INT $(pgrep -f "^$B/quill-up -d $D/q") 2>/dev/null; for t in $(seq 1 40); do [ -s $D/time ] && break; sleep 0.5; done
kill $sinkpid 2>/dev/null
echo "mode $mode delivered $(grep -rh '^X-Bench-Id' $D/sink | sort -u | wc -l) unique of $(grep -rh '^X-Bench-Id' $D/sink | wc -l) files"
cat $D/time
grep -E "total|execve|clone|connect" $D/strace
