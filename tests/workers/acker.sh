#!/bin/sh
# A worker that sends a control message on request, through a child process,
# the way a shell worker acks with nc: on SIGUSR1 it sends the file
# $ACKER_DIR/msg-$$ (written by the test) to $EINHORN_SOCK_PATH from a python3
# child, which reads until the master hangs up and reports the reply's size in
# $ACKER_DIR/sent-$$. SIGUSR2/TERM/INT: exit 0.
# Used by tests/integration/acks.rs.
send() {
    got=$(python3 -c '
import os, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(os.environ["EINHORN_SOCK_PATH"])
with open(sys.argv[1], "rb") as f:
    s.sendall(f.read())
s.shutdown(socket.SHUT_WR)
reply = b""
while True:
    b = s.recv(4096)
    if not b:
        break
    reply += b
print(len(reply))
' "$ACKER_DIR/msg-$$")
    # What came back (the byte count of the reply, 0 when the master just
    # hung up), published atomically for the test.
    echo "$got" > "$ACKER_DIR/sent-$$.tmp" && mv "$ACKER_DIR/sent-$$.tmp" "$ACKER_DIR/sent-$$"
}
trap send USR1
trap 'exit 0' USR2 TERM INT
# Ready for SIGUSR1 (before the trap it would kill us).
: > "$ACKER_DIR/ready-$$"
while :; do
    sleep 0.05
done
